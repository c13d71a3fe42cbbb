"""Shared pieces of the fuzz suite: how a command is run and what every run must satisfy."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings

from abcrown_plugins import checkpoints
from abcrown_plugins.cli import main

#: bounded so the whole suite stays under about a minute on a 2-core CPU; no example database is written
FUZZ = settings(deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def run_cli(argv: list[str], stdout: bool = False):
    """``main(argv)`` with stdout/stderr captured: ``(exit code, stderr)``, or ``(code, stdout, stderr)``.

    Every exception that escapes ``main`` fails the test (a user would see a traceback);
    only argparse's ``--help`` may end in ``SystemExit(0)``.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            assert e.code == 0 and ("-h" in argv or "--help" in argv), f"SystemExit({e.code}) from {argv!r}"
            code = 0
    return (code, out.getvalue(), err.getvalue()) if stdout else (code, err.getvalue())


def assert_clean_exit(code: int, err: str, argv: list[str]) -> None:
    """Exit code 0, or 2 with exactly one short error line (warnings may precede it)."""
    assert code in (0, 2), f"exit code {code} from {argv!r}: {err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    if code == 2:
        errors = [line for line in err.strip().splitlines() if "error:" in line]
        assert len(errors) == 1 and len(errors[0]) < 600, f"{argv!r}: {err[-2000:]}"


def assert_nothing_half_written(folder: Path) -> None:
    """No temporary file of the atomic writer (``.NAME.*.tmp``) anywhere under ``folder``."""
    left = [str(p) for p in folder.rglob(".*.tmp")]
    assert not left, left


@contextlib.contextmanager
def inside(folder: Path):
    """Run with ``folder`` as the working directory (default output folders land there)."""
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def tiny_checkpoint(path: Path, dataset: str = "synthetic") -> Path:
    """An untrained cnn_small for ``dataset``, saved as a real checkpoint."""
    from abcrown_plugins.data import dataset_info
    from abcrown_plugins.models import model_for, model_meta

    info = dataset_info(dataset)
    torch.manual_seed(0)
    model = model_for("cnn_small", info).eval()
    checkpoints.save_model_checkpoint(path, model.state_dict(), model_meta("cnn_small", info).replace(eps=1 / 255))
    return path
