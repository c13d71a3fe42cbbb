"""One executor for every embarrassingly parallel workload: local processes by default, Ray when asked.

α,β-CROWN instances in the pruning loop, ``vnncomp run`` and ``certify`` (one task
per image) hand their tasks to :func:`run_tasks`; the executor (:data:`EXECUTORS`)
decides where they run. The contract (idempotent atomic results, retries, merged
results in task order) is in :mod:`.base`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from abcrown_plugins.executor.base import ExecutorSettings, Outcome, Task, Tracker, threads_per_worker
from abcrown_plugins.executor.distributed import ray_available, run_ray
from abcrown_plugins.executor.local import run_local, shutdown_pools

__all__ = ["EXECUTORS", "ExecutorSettings", "Outcome", "Task", "ray_available", "run_tasks", "shutdown_pools",
           "threads_per_worker"]

EXECUTORS = {
    "local": (run_local, "worker processes on this machine (--workers N; 1 runs in this process)"),
    "ray": (run_ray, "a Ray cluster (--ray-address ADDR joins one; none starts a local one); extra [distributed]"),
}


def run_tasks(tasks: Sequence[Task], results_dir: str | Path, settings: ExecutorSettings | None = None,
              desc: str = "tasks") -> list[Outcome]:
    """Run every task whose result is not yet in ``results_dir``; one :class:`Outcome` per task, in task order."""
    settings = settings or ExecutorSettings()
    tracker = Tracker(tasks, Path(results_dir), desc)
    try:
        if tracker.todo:
            EXECUTORS[settings.kind][0](tracker, settings)
    finally:
        tracker.close()
    return tracker.results()
