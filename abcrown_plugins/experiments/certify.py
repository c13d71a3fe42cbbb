"""The certify run: randomized-smoothing certification (L2) of a checkpoint on its own data split.

Loads the checkpoint (:func:`abcrown_plugins.models.load_model`), picks the data
the network classifies (its data set, or its downstream attribute task for a
transfer checkpoint) and certifies every ``smoothing.skip``-th example, one
executor task per example (:func:`certify_task`: each worker process loads the
network and the data once). Example ``idx`` draws its noise from ``(seed, idx)``
only, so every executor and any number of workers give the rows of a serial run.
Finished examples are kept under ``examples/SETTINGS`` (a digest of the TSV's
comment line: settings, seed, checkpoint), so a killed run resumes; ``certify.tsv``,
the certified-accuracy table and plot are written from all rows at the end. The
folder follows the run-folder rule (:mod:`.rundir`) with the name
``certify-CKPT-TAG`` (TAG: a digest of the checkpoint file's content); its
``run.json`` records what the rows depend on (:func:`certify_identity`: the
checkpoint's content hash, not its path, the data and the certifier's settings),
and a resume with anything different is refused with one line.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abcrown_plugins import checkpoints
from abcrown_plugins.config import Config
from abcrown_plugins.errors import UserError
from abcrown_plugins.executor import ExecutorSettings, Task, run_tasks
from abcrown_plugins.experiments.rundir import checkpoint_identity, claim_run_dir, run_dir
from abcrown_plugins.models import load_model
from abcrown_plugins.runtime import select_device, set_threads
from abcrown_plugins.smoothing import warn_unreachable
from abcrown_plugins.smoothing.run import (
    SmoothingSettings,
    certify_example,
    example_indices,
    open_tsv,
    write_report,
    write_tsv,
)
from abcrown_plugins.transfer.scenario import dataset_for_checkpoint

__all__ = ["CertifyResult", "CertifySource", "certify_identity", "certify_task", "run_certify"]


@dataclass(frozen=True)
class CertifySource:
    """What a worker needs to rebuild the network and the data: checkpoint, split, data settings, device."""

    checkpoint: str
    split: str
    root: str | None
    num: int | None
    data_seed: int
    device: str

    def load(self):
        """``(model, dataset)``, loaded once per process."""
        if self not in _LOADED:
            loaded = load_model(self.checkpoint, device=self.device)
            dataset = dataset_for_checkpoint(loaded.meta, self.split, self.root, self.num, seed=self.data_seed)
            _LOADED[self] = (loaded.model, dataset)
        return _LOADED[self]


_LOADED: dict[CertifySource, tuple[Any, Any]] = {}


def certify_task(source: CertifySource, idx: int, settings: SmoothingSettings, seed: int) -> dict[str, Any]:
    """Executor task: the TSV row of example ``idx``."""
    model, dataset = source.load()
    return certify_example(model, dataset, idx, settings, source.device, seed)


@dataclass(frozen=True)
class CertifyResult:
    """What a certify run produced: its folder, one row per example, the table, the settings and data set name."""

    out: Path
    rows: list[dict[str, Any]]
    table: list[dict[str, Any]]
    settings: SmoothingSettings
    dataset: str


def run_certify(cfg: Config, checkpoint: str | Path, out: str | Path | None = None,
                warn: Callable[[str], None] = lambda m: None) -> CertifyResult:
    """Certify ``checkpoint`` as ``cfg``'s smoothing section says, on ``cfg``'s executor (module docstring)."""
    settings = SmoothingSettings.from_config(cfg)
    set_threads(cfg.general.num_threads)
    device = select_device(cfg.general.device)
    ckpt = str(checkpoints.resolve(checkpoint).resolve())
    source = CertifySource(ckpt, settings.split, cfg.data.root, cfg.data.num_test, cfg.general.seed, str(device))
    _, dataset = source.load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msg = warn_unreachable(settings.radii, settings.n, settings.alpha, settings.sigma)
    if msg:
        warn(msg)
    identity = certify_identity(cfg, settings, checkpoint_identity(ckpt), device)
    folder = run_dir(cfg, out, name=f"certify-{Path(checkpoint).stem}-{identity['checkpoint'][7:13]}")
    with claim_run_dir(folder, cfg, "certify", identity, config_bound=False):
        in_header = ("smoothing.sigma", "smoothing.n0", "smoothing.n", "smoothing.alpha", "general.seed")
        tag = "; ".join(f"{k}={v}" for k, v in identity.items() if k not in in_header)
        path, header, rows = open_tsv(folder, settings, cfg.general.seed, tag)
        done = {r["idx"] for r in rows}
        tasks = [Task(f"{idx:06d}", certify_task, (source, idx, settings, cfg.general.seed))
                 for idx in example_indices(len(dataset), settings.skip, settings.num_examples) if idx not in done]
        examples = folder / "examples" / hashlib.sha256(header.encode()).hexdigest()[:12]
        outcomes = run_tasks(tasks, examples, ExecutorSettings.from_config(cfg), desc="certify")
        rows += [o.result for o in outcomes if o.ok]
        write_tsv(path, header, rows)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise UserError(f"{len(failed)} of {len(outcomes)} examples failed (first: {failed[0].key}: "
                            f"{failed[0].error}); the other rows are in {path}; run the same command again to retry "
                            "them")
        rows.sort(key=lambda r: r["idx"])
        table = write_report(rows, settings, folder, title=f"certified accuracy of {Path(checkpoint).name}")
    return CertifyResult(folder, rows, table, settings, dataset.info.name)


def certify_identity(cfg: Config, settings: SmoothingSettings, checkpoint: str, device) -> dict[str, Any]:
    """What a certify row depends on: the checkpoint's content, the data (split, root, subset, seed), the
    certifier's settings (sigma, n0, n, alpha, batch size: it draws the noise batch by batch) and the device
    (its generator). Which examples are certified (skip, num_examples) and the table radii are not in it."""
    return {"checkpoint": checkpoint, "smoothing.split": settings.split, "data.root": cfg.data.root,
            "data.num_test": cfg.data.num_test, "general.seed": cfg.general.seed, "smoothing.sigma": settings.sigma,
            "smoothing.n0": settings.n0, "smoothing.n": settings.n, "smoothing.alpha": settings.alpha,
            "smoothing.batch_size": settings.batch_size, "device": str(device)}
