"""The Ray executor: the same tasks on a Ray cluster (optional extra ``abcrown-plugins[distributed]``).

``ray_address`` joins an existing cluster (``ray start --head`` on one node,
``ray start --address HEAD:6379`` on the others; Slurm and Kubernetes start the
same processes); None starts a local one sized to this machine. Each task is a
remote function asking for :func:`~.base.threads_per_worker` CPUs and the
task's ``num_gpus``; Ray re-runs a task whose worker process died
(``max_retries``), and a task that raises is retried the same number of times.
Results travel back to the driver, which writes them (no shared file system
is needed).
"""

from __future__ import annotations

import os

from abcrown_plugins.errors import UserError
from abcrown_plugins.executor.base import ExecutorSettings, Tracker, describe, execute, threads_per_worker

__all__ = ["INSTALL_HINT", "ray_available", "run_ray"]

INSTALL_HINT = "the ray executor needs Ray: pip install 'abcrown-plugins[distributed]' (or pip install ray)"


def ray_available() -> bool:
    try:
        import ray  # noqa: F401  (optional dependency)
    except ImportError:
        return False
    return True


def _connect(settings: ExecutorSettings):
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    if not ray.is_initialized():
        env = {"env_vars": {"OMP_NUM_THREADS": str(threads_per_worker(settings))}}
        if settings.ray_address:
            try:
                ray.init(address=settings.ray_address, runtime_env=env, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"cannot join the Ray cluster at '{settings.ray_address}': "
                                f"{str(e).splitlines()[0][:200]}") from None
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False, runtime_env=env)
    return ray


def run_ray(tracker: Tracker, settings: ExecutorSettings) -> None:
    """Run ``tracker``'s unfinished tasks as Ray tasks; results are written by this driver as they arrive."""
    ray = _connect(settings)
    threads = threads_per_worker(settings)
    remote = ray.remote(execute)
    refs = {}
    for task in tracker.todo:
        ref = remote.options(num_cpus=threads, num_gpus=task.num_gpus, max_retries=settings.retries,
                             retry_exceptions=True).remote(task.fn, task.args, task.kwargs)
        refs[ref] = task
    tracker.started(len(refs))
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for ref in done:
            task = refs.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - RayTaskError / WorkerCrashedError after all retries
                cause = getattr(e, "cause", None) or e
                tracker.finished(task.key, None, describe(cause) if cause is not e else str(e).splitlines()[0],
                                 settings.retries + 1)
            else:
                tracker.finished(task.key, result, None, 1)
