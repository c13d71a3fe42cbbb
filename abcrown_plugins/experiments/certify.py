"""The certify run: randomized-smoothing certification (L2) of a checkpoint on its own data split.

Loads the checkpoint (:func:`abcrown_plugins.models.load_model`), picks the data
the network classifies (its data set, or its downstream attribute task for a
transfer checkpoint), certifies every ``smoothing.skip``-th example with
:func:`abcrown_plugins.smoothing.run.certify_dataset` (resumable TSV) and writes
the certified-accuracy table and plot. The folder follows the run-folder rule
(:mod:`.rundir`) with the name ``certify-CKPT-TAG`` (TAG: a digest of the
checkpoint's absolute path).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abcrown_plugins.config import Config
from abcrown_plugins.experiments.rundir import run_dir
from abcrown_plugins.models import load_model
from abcrown_plugins.runtime import select_device, set_threads
from abcrown_plugins.smoothing import warn_unreachable
from abcrown_plugins.smoothing.run import SmoothingSettings, certify_dataset, write_report
from abcrown_plugins.transfer.scenario import dataset_for_checkpoint

__all__ = ["CertifyResult", "run_certify"]


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
    """Certify ``checkpoint`` as ``cfg``'s smoothing section says (module docstring)."""
    settings = SmoothingSettings.from_config(cfg)
    set_threads(cfg.general.num_threads)
    device = select_device(cfg.general.device)
    loaded = load_model(checkpoint, device=device)
    dataset = dataset_for_checkpoint(loaded.meta, settings.split, cfg.data.root, cfg.data.num_test,
                                     seed=cfg.general.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msg = warn_unreachable(settings.radii, settings.n, settings.alpha, settings.sigma)
    if msg:
        warn(msg)
    ckpt = str(Path(checkpoint).resolve())
    tag = hashlib.sha256(ckpt.encode()).hexdigest()[:6]
    folder = run_dir(cfg, out, name=f"certify-{Path(checkpoint).stem}-{tag}")
    rows = certify_dataset(loaded.model, dataset, settings, folder, device, seed=cfg.general.seed,
                           tag=f"checkpoint={ckpt}")
    table = write_report(rows, settings, folder, title=f"certified accuracy of {Path(checkpoint).name}")
    return CertifyResult(folder, rows, table, settings, dataset.info.name)
