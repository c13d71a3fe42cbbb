"""The export run: a VNN-COMP benchmark folder of a checkpoint, on the data its network classifies.

:func:`run_export` is :func:`abcrown_plugins.export.export_benchmark` with the
test split of :func:`abcrown_plugins.transfer.scenario.dataset_for_checkpoint`:
the checkpoint's data set, or, for a downstream transfer checkpoint, its
attribute task with that task's labels and class count (a multi-head base
network is refused with one line). A ``dataset`` name overrides it: with
``vnnlib:DIR`` the properties of that benchmark are copied box for box. The
export layer cannot reach the transfer scenario itself, so the choice of data is
made here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from abcrown_plugins.export import export_benchmark
from abcrown_plugins.transfer.scenario import dataset_for_checkpoint

__all__ = ["run_export"]


def run_export(checkpoint: str | Path, out: str | Path, n: int | None, eps: float | None, seed: int,
               timeout: float = 60.0, data_root: str | None = None, force: bool = False, dataset: str | None = None,
               vnnlib_version: int = 1) -> dict[str, Any]:
    """Export ``checkpoint`` to the benchmark folder ``out`` (arguments: :func:`export_benchmark`)."""
    return export_benchmark(checkpoint, out, n, eps, seed, timeout, data_root, force,
                            dataset_for=lambda meta: dataset_for_checkpoint(meta, "test", data_root, None, seed=0),
                            dataset=dataset, vnnlib_version=vnnlib_version)
