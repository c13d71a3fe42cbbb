"""The executor contract: same results in the same order for every executor, retries, resume, failures."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from abcrown_plugins.errors import UserError
from abcrown_plugins.executor import ExecutorSettings, Task, ray_available, run_tasks


def square(i: int, pause: float = 0.0) -> dict:
    import time

    time.sleep(pause * ((7 * i) % 3))  # finish out of order
    return {"i": i, "square": i * i, "pid": os.getpid()}


def die_once(i: int, marker: str) -> dict:
    """Kill the worker process the first time (a crashed worker), succeed when retried."""
    flag = Path(marker) / f"{i}.died"
    if i == 1 and not flag.exists():
        flag.write_text("x")
        os._exit(9)
    return {"i": i}


def fail_always(i: int) -> dict:
    if i == 2:
        raise ValueError("bad instance 2")
    return {"i": i}


def _tasks(fn, n, **kw):
    return [Task(f"t{i:03d}", fn, (i,), kw) for i in range(n)]


def _strip(outcomes):
    return [{k: v for k, v in o.result.items() if k != "pid"} for o in outcomes]


def test_pool_equals_serial_in_task_order(tmp_path):
    serial = run_tasks(_tasks(square, 6), tmp_path / "s", ExecutorSettings(workers=1))
    pool = run_tasks(_tasks(square, 6, pause=0.05), tmp_path / "p", ExecutorSettings(workers=2))
    assert _strip(pool) == _strip(serial) == [{"i": i, "square": i * i} for i in range(6)]
    assert len({o.result["pid"] for o in pool}) == 2 and os.getpid() not in {o.result["pid"] for o in pool}
    assert json.loads((tmp_path / "p" / "t005.json").read_text())["square"] == 25


def test_finished_tasks_are_not_run_again(tmp_path):
    first = run_tasks(_tasks(square, 3), tmp_path, ExecutorSettings())
    (tmp_path / "t001.json").unlink()  # as if the driver was killed before task 1 finished
    stamp = (tmp_path / "t000.json").stat().st_mtime_ns
    again = run_tasks(_tasks(square, 3), tmp_path, ExecutorSettings())
    assert _strip(again) == _strip(first) and (tmp_path / "t000.json").stat().st_mtime_ns == stamp
    assert [o.attempts for o in again] == [0, 1, 0]


def test_a_killed_worker_is_retried(tmp_path):
    marker = tmp_path / "markers"
    marker.mkdir()
    out = run_tasks(_tasks(die_once, 4, marker=str(marker)), tmp_path / "r", ExecutorSettings(workers=2))
    assert all(o.ok for o in out) and [o.result["i"] for o in out] == [0, 1, 2, 3]
    assert (marker / "1.died").exists()


def test_a_failing_task_is_reported_and_the_rest_go_on(tmp_path):
    out = run_tasks(_tasks(fail_always, 4), tmp_path, ExecutorSettings(retries=1))
    assert [o.ok for o in out] == [True, True, False, True]
    assert "bad instance 2" in out[2].error and out[2].attempts == 2
    assert not (tmp_path / "t002.json").exists()  # a later run tries it again


def test_bad_settings_are_one_line():
    with pytest.raises(UserError, match="unknown executor"):
        ExecutorSettings(kind="slurm")
    with pytest.raises(UserError, match="--workers"):
        ExecutorSettings(workers=0)
    with pytest.raises(UserError, match="between 1 and 1024"):
        ExecutorSettings(workers=10**12)


@pytest.mark.slow
@pytest.mark.skipif(not ray_available(), reason="Ray is not installed (pip install 'abcrown-plugins[distributed]')")
def test_ray_on_a_real_local_cluster_equals_local(tmp_path):
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module
    try:
        local = run_tasks(_tasks(square, 5), tmp_path / "l", ExecutorSettings())
        remote = run_tasks(_tasks(square, 5), tmp_path / "r", ExecutorSettings(kind="ray"))
        assert ray.is_initialized()
        assert _strip(remote) == _strip(local)
        assert os.getpid() not in {o.result["pid"] for o in remote}
        failed = run_tasks(_tasks(fail_always, 3), tmp_path / "f", ExecutorSettings(kind="ray", retries=0))
        assert [o.ok for o in failed] == [True, True, False] and "bad instance 2" in failed[2].error
    finally:
        ray.shutdown()


DRIVER = """
import sys
sys.path.insert(0, {here!r})
from test_executor import _tasks, square
from abcrown_plugins.executor import ExecutorSettings, run_tasks
run_tasks(_tasks(square, 8, pause=0.4), {out!r}, ExecutorSettings(workers=2))
"""


@pytest.mark.slow
def test_a_killed_driver_resumes_to_the_uninterrupted_result(tmp_path):
    import subprocess
    import time

    here = str(Path(__file__).parent)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER.format(here=here, out=str(out))])
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done_before = len(list(out.glob("*.json")))
    assert 2 <= done_before < 8 and not list(out.glob(".*.tmp"))  # killed mid-run, nothing half-written
    resumed = run_tasks(_tasks(square, 8, pause=0.4), out, ExecutorSettings(workers=2))
    straight = run_tasks(_tasks(square, 8), tmp_path / "straight", ExecutorSettings())
    assert _strip(resumed) == _strip(straight)
    assert sum(o.attempts == 0 for o in resumed) == done_before  # finished tasks were not run again
