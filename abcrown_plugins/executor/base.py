"""Tasks, their result files, and the contract every executor keeps.

A :class:`Task` is one unit of embarrassingly parallel work: a module-level
function (so it pickles by reference into worker processes and Ray workers),
its arguments, and a ``key`` that names its result. ``fn(*args, **kwargs)``
returns a JSON-able dict.

The contract (:func:`run_tasks`):

* **Idempotent and atomic.** The driver writes each finished task's result to
  ``results_dir/KEY.json`` atomically; a task whose file exists is not run again,
  so a killed driver resumes without redoing finished work.
* **Retried.** A task whose worker dies (killed, out of memory) is run again, up
  to ``retries`` more times; a task that raises is retried the same way and then
  reported as failed (no result file: the next run tries it again).
* **Deterministic merge.** Results come back in the order of ``tasks`` whatever
  order they finished in, so the merged output of any executor and any number of
  workers equals a serial run's (tasks must not depend on which process runs them).
"""

from __future__ import annotations

import json
import os
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abcrown_plugins.errors import UserError
from abcrown_plugins.fileio import atomic_write_text
from abcrown_plugins.runtime import progress

__all__ = ["ExecutorSettings", "Outcome", "Task", "execute", "result_path", "threads_per_worker"]

_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")

#: More local worker processes than this is a typo, not a plan (each is a Python process with torch).
MAX_WORKERS = 1024


@dataclass(frozen=True)
class Task:
    """``fn(*args, **kwargs) -> dict``, its result named ``key`` (letters, digits, ``_.-``)."""

    key: str
    fn: Callable[..., dict[str, Any]]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if not _KEY.match(self.key):
            raise ValueError(f"task key {self.key!r} must be letters, digits, '_', '.' or '-'")


@dataclass(frozen=True)
class Outcome:
    """A task's result (``result``), or why it failed (``error``, result None) after all retries."""

    key: str
    result: dict[str, Any] | None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ExecutorSettings:
    """``kind`` (local or ray), ``workers`` (local processes; 1 runs in this process), ``threads`` per
    worker (0: cores // workers), ``ray_address`` (None starts a local Ray cluster), ``retries``."""

    kind: str = "local"
    workers: int = 1
    threads: int = 0
    ray_address: str | None = None
    retries: int = 2

    def __post_init__(self) -> None:
        if self.kind not in ("local", "ray"):
            raise UserError(f"unknown executor '{self.kind}' (valid: local, ray)")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise UserError(f"--workers must be between 1 and {MAX_WORKERS}, got {str(self.workers)[:80]}")
        if self.threads < 0 or self.retries < 0:
            raise UserError(f"executor threads and retries must be >= 0, got {self.threads} and {self.retries}")

    @classmethod
    def from_config(cls, cfg) -> "ExecutorSettings":
        e = cfg.executor
        return cls(kind=e.kind, workers=e.workers, threads=e.threads, ray_address=e.ray_address,
                   retries=e.retries)


def threads_per_worker(settings: ExecutorSettings) -> int:
    """Threads each worker may use: ``settings.threads``, else the cores shared out (workers x threads <= cores)."""
    if settings.threads:
        return settings.threads
    return max(1, (os.cpu_count() or 1) // settings.workers)


def result_path(results_dir: Path, key: str) -> Path:
    return results_dir / f"{key}.json"


def execute(fn: Callable[..., dict[str, Any]], args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run one task body; what a worker calls. Results must be JSON-able (checked here, in the worker)."""
    result = fn(*args, **kwargs)
    if not isinstance(result, dict):
        raise TypeError(f"a task must return a dict, {getattr(fn, '__name__', fn)} returned {type(result).__name__}")
    json.dumps(result)
    return result


def describe(exc: BaseException) -> str:
    """One line for a failed task: the exception and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}{': ' + text[:200] if text else ''}{where}"


class Tracker:
    """Result files, the progress bar with done / failed / running counts, and outcomes in task order."""

    def __init__(self, tasks: Sequence[Task], results_dir: Path, desc: str):
        keys = [t.key for t in tasks]
        if len(set(keys)) != len(keys):
            raise ValueError("task keys must be unique")
        self.tasks = list(tasks)
        self.dir = Path(results_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.outcomes: dict[str, Outcome] = {}
        for t in self.tasks:
            path = result_path(self.dir, t.key)
            if path.is_file():
                self.outcomes[t.key] = Outcome(t.key, json.loads(path.read_text()), attempts=0)
        self.running = 0
        self.bar = progress(range(len(self.tasks)), desc=desc, total=len(self.tasks), leave=False)
        self.bar.update(len(self.outcomes))
        self._postfix()

    @property
    def todo(self) -> list[Task]:
        return [t for t in self.tasks if t.key not in self.outcomes]

    def _postfix(self) -> None:
        failed = sum(1 for o in self.outcomes.values() if not o.ok)
        if hasattr(self.bar, "set_postfix_str"):
            self.bar.set_postfix_str(f"done={len(self.outcomes) - failed} failed={failed} running={self.running}",
                                     refresh=False)

    def started(self, n: int = 1) -> None:
        self.running += n
        self._postfix()

    def finished(self, key: str, result: dict[str, Any] | None, error: str | None, attempts: int,
                 was_running: bool = True) -> None:
        if result is not None:
            atomic_write_text(result_path(self.dir, key), json.dumps(result, sort_keys=True) + "\n")
        self.outcomes[key] = Outcome(key, result, error, attempts)
        self.running -= 1 if was_running else 0
        self.bar.update(1)
        self._postfix()

    def close(self) -> None:
        if hasattr(self.bar, "close"):
            self.bar.close()

    def results(self) -> list[Outcome]:
        """One outcome per task, in task order (every task must have finished)."""
        if self.todo:
            missing = ", ".join(t.key for t in self.todo[:3])
            raise RuntimeError(f"the executor returned without finishing tasks ({missing} ...)")
        return [self.outcomes[t.key] for t in self.tasks]
