"""Batch-size calibration: the fastest per sample wins, the cache hits, misses when the key changes, survives
corruption, and the memory budget keeps a batch from ever running."""

from __future__ import annotations

import json
import mmap
import time

import pytest
import torch

from abcrown_plugins.errors import UserError
from abcrown_plugins.tuning import cache_folder, choose_batch_size, model_digest, tune_allocator
from abcrown_plugins.tuning.alloc import glibc_version


class Workload:
    """``cost(b) = 3 ms + 10 us * b + 0.2 us * b^2`` seconds per batch: per sample fastest near b = 122."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, b: int) -> None:
        self.calls.append(b)
        time.sleep(0.003 + 1e-5 * b + 2e-7 * b * b)


def test_the_fastest_per_sample_wins_and_every_candidate_is_timed_interleaved(tmp_path):
    run = Workload()
    cal = choose_batch_size("toy", run, [500, 10, 120, 50], key={"model": "m"}, cache_dir=tmp_path, reps=3)
    assert cal.batch_size == 120 and not cal.cached
    assert sorted(cal.per_sample_s) == [10, 50, 120, 500]
    assert cal.per_sample_s[120] < cal.per_sample_s[50] < cal.per_sample_s[10]
    assert run.calls[0] == 10  # the warm-up
    rounds = run.calls[1:]
    assert len(rounds) == 12 and rounds[:4] == [10, 50, 120, 500]  # first round in increasing order
    assert rounds[4:8] == [50, 120, 500, 10]                          # then rotated


def test_cache_hit_and_recalibration_when_the_key_changes(tmp_path):
    run = Workload()
    first = choose_batch_size("toy", run, [10, 50, 120], key={"model": "a", "device": "cpu"}, cache_dir=tmp_path,
                              reps=1)
    n = len(run.calls)
    again = choose_batch_size("toy", run, [10, 50, 120], key={"model": "a", "device": "cpu"}, cache_dir=tmp_path,
                              reps=1)
    assert again.cached and len(run.calls) == n
    assert (again.batch_size, again.per_sample_s) == (first.batch_size, first.per_sample_s)
    for change in ({"model": "b", "device": "cpu"}, {"model": "a", "device": "cuda:0"}):
        assert not choose_batch_size("toy", run, [10, 50, 120], key=change, cache_dir=tmp_path, reps=1).cached
    assert not choose_batch_size("other", run, [10, 50, 120], key={"model": "a", "device": "cpu"},
                                 cache_dir=tmp_path, reps=1).cached
    assert not choose_batch_size("toy", run, [10, 50], key={"model": "a", "device": "cpu"}, cache_dir=tmp_path,
                                 reps=1).cached
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads != 1 else 2)
        assert not choose_batch_size("toy", run, [10, 50, 120], key={"model": "a", "device": "cpu"},
                                     cache_dir=tmp_path, reps=1).cached
    finally:
        torch.set_num_threads(threads)
    assert choose_batch_size("toy", run, [10, 50, 120], key={"model": "a", "device": "cpu"}, cache_dir=tmp_path,
                             reps=1).cached


@pytest.mark.parametrize("damage", ["{not json", "", '{"key": 1}', "[]", "null"])
def test_a_corrupt_cache_file_is_recalibrated_and_rewritten(tmp_path, damage):
    run = Workload()
    choose_batch_size("toy", run, [10, 50], key={"model": "a"}, cache_dir=tmp_path, reps=1)
    (path,) = (tmp_path / "calibration").glob("toy-*.json")
    path.write_text(damage)
    cal = choose_batch_size("toy", run, [10, 50], key={"model": "a"}, cache_dir=tmp_path, reps=1)
    assert not cal.cached and cal.batch_size in (10, 50)
    assert json.loads(path.read_text())["batch_size"] == cal.batch_size
    assert choose_batch_size("toy", run, [10, 50], key={"model": "a"}, cache_dir=tmp_path, reps=1).cached
    # a cached choice that is not one of the candidates is not trusted either
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "batch_size": 7}))
    assert not choose_batch_size("toy", run, [10, 50], key={"model": "a"}, cache_dir=tmp_path, reps=1).cached


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ABCROWN_PLUGINS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder() == tmp_path / "xdg" / "abcrown_plugins"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_folder() == tmp_path / "home" / ".cache" / "abcrown_plugins"
    monkeypatch.setenv("ABCROWN_PLUGINS_CACHE", str(tmp_path / "mine"))
    assert cache_folder() == tmp_path / "mine"
    choose_batch_size("toy", Workload(), [10], key={}, reps=1)
    assert len(list((tmp_path / "mine" / "calibration").glob("toy-*.json"))) == 1


def _touch_mib(b: int) -> None:
    """Map and touch ``b`` MiB of fresh pages (never reused from the heap, so the resident peak grows by b)."""
    with mmap.mmap(-1, b << 20) as m:
        m.write(b"\1" * (b << 20))


@pytest.mark.skipif(not glibc_version(), reason="the resident-memory peak is read from /proc (Linux)")
def test_memory_budget_skips_a_batch_before_it_runs(tmp_path):
    calls = []

    def run(b):
        calls.append(b)
        _touch_mib(b)

    cal = choose_batch_size("mem", run, [2, 4, 4096], key={}, budget_mib=64, cache_dir=tmp_path, reps=2)
    assert 4096 not in calls and cal.skipped == (4096,)
    assert cal.batch_size in (2, 4) and 3 < cal.peak_mib[4] < 64
    # a cached choice above a smaller budget is measured again; nothing fits half a MiB
    with pytest.raises(UserError, match="memory budget"):
        choose_batch_size("mem", run, [2, 4, 4096], key={}, budget_mib=0.5, cache_dir=tmp_path, reps=1)


def test_model_digest_names_structure_and_optionally_weights():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    assert model_digest(a) != model_digest(b)
    assert model_digest(a, weights=False) == model_digest(b, weights=False)
    assert model_digest(a, weights=False) != model_digest(torch.nn.Linear(4, 2), weights=False)
    conv = torch.nn.Conv2d(3, 4, 3)
    before = model_digest(conv, weights=False)
    assert model_digest(conv.to(memory_format=torch.channels_last), weights=False) != before


def test_tune_allocator_applies_on_glibc_and_is_a_no_op_elsewhere(monkeypatch):
    assert tune_allocator() is bool(glibc_version())
    assert tune_allocator() is bool(glibc_version())  # idempotent
    monkeypatch.setattr("abcrown_plugins.tuning.alloc.sys.platform", "darwin")
    assert glibc_version() is None and tune_allocator() is False
