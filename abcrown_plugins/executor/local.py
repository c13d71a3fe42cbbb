"""The local executor: this process (one worker), or a pool of worker processes on this machine.

Workers are started with ``spawn`` (a forked copy of a process that already ran
torch's thread pools can deadlock) and each limits itself to
:func:`~.base.threads_per_worker` threads (torch's pool and, through
``OMP_NUM_THREADS``, any verifier process it starts). The pool is kept between
calls (one per worker count), so what a worker set up for one batch of tasks
(a loaded model, a started α,β-CROWN process) serves the next batch too. A
worker process that dies breaks the pool: its unfinished tasks are counted as
one attempt and run again in a fresh pool.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from abcrown_plugins.executor.base import ExecutorSettings, Task, Tracker, describe, execute, threads_per_worker

__all__ = ["run_local", "shutdown_pools"]


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _serial(tracker: Tracker, settings: ExecutorSettings) -> None:
    for task in tracker.todo:
        for attempt in range(1, settings.retries + 2):
            tracker.started()
            try:
                result = execute(task.fn, task.args, task.kwargs)
            except Exception as e:  # noqa: BLE001 - a task's failure is reported, the others go on
                if attempt <= settings.retries:
                    tracker.running -= 1
                    continue
                tracker.finished(task.key, None, describe(e), attempt)
            else:
                tracker.finished(task.key, result, None, attempt)
            break


_POOLS: dict[tuple[int, int], ProcessPoolExecutor] = {}


def _get_pool(workers: int, threads: int) -> ProcessPoolExecutor:
    """This process's pool of ``workers`` processes, kept between calls so a worker's state (a loaded
    model, a started verifier) serves later tasks too; shut down at exit."""
    key = (workers, threads)
    if key not in _POOLS:
        if not _POOLS:
            atexit.register(shutdown_pools)
        _POOLS[key] = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_init_worker, initargs=(threads,))
    return _POOLS[key]


def shutdown_pools() -> None:
    """Stop every kept worker process (at exit; benchmarks call it to measure cold starts)."""
    for pool in _POOLS.values():
        pool.shutdown(wait=True, cancel_futures=True)
    _POOLS.clear()


def _pool(tracker: Tracker, settings: ExecutorSettings) -> None:
    threads = threads_per_worker(settings)
    attempts: dict[str, int] = {}
    while tracker.todo:
        pool = _get_pool(settings.workers, threads)
        pending: dict[Future, Task] = {}
        queue = list(tracker.todo)
        broken = False

        def submit() -> None:
            while queue and len(pending) < settings.workers:
                task = queue.pop(0)
                attempts[task.key] = attempts.get(task.key, 0) + 1
                pending[pool.submit(execute, task.fn, task.args, task.kwargs)] = task
                tracker.started()

        submit()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                task = pending.pop(fut)
                try:
                    result: Any = fut.result()
                except BrokenProcessPool:
                    broken = True
                    tracker.running -= 1
                    continue
                except Exception as e:  # noqa: BLE001 - reported per task
                    if attempts[task.key] <= settings.retries:
                        tracker.running -= 1
                        queue.append(task)
                    else:
                        tracker.finished(task.key, None, describe(e), attempts[task.key])
                    continue
                tracker.finished(task.key, result, None, attempts[task.key])
            if broken:
                for _ in pending.values():  # the pool is gone: every running task lost one attempt
                    tracker.running -= 1
                pending.clear()
                _POOLS.pop((settings.workers, threads), None)
                pool.shutdown(wait=False, cancel_futures=True)
                break
            submit()
        for task in tracker.todo:
            if attempts.get(task.key, 0) > settings.retries:
                tracker.finished(task.key, None, "its worker process died on every attempt", attempts[task.key],
                                 was_running=False)
        if not broken:
            break


def run_local(tracker: Tracker, settings: ExecutorSettings) -> None:
    """Run ``tracker``'s unfinished tasks in this process (one worker) or in a spawned process pool."""
    if settings.workers == 1:
        _serial(tracker, settings)
    else:
        _pool(tracker, settings)
