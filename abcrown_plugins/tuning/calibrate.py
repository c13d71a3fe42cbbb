"""Batch size chosen by measurement: time a few candidates, keep the fastest per sample, cache the choice.

:func:`choose_batch_size` calls ``run(b)`` (one batch of ``b`` samples of the
workload) for every candidate ``b``: one untimed warm-up at the smallest
candidate, then ``reps`` rounds that each time every candidate once, in an order
rotated per round (interleaved, so host load drifts over all of them alike). A
candidate's figure is the median over its rounds of seconds per sample; the
smallest figure wins (ties: the smaller batch). The first round runs the
candidates in increasing order and measures each one's peak memory
(:func:`peak_memory_mib`); with a memory budget, a candidate whose peak,
extrapolated linearly from the largest candidate measured so far, exceeds the
budget is never run, and one measured above it is dropped.

The choice is cached as JSON in :func:`cache_folder` ``/calibration``, one file
per workload and key. The key a caller passes (e.g. the model's
:func:`model_digest`, the device) is completed with the workload, the torch
version, torch's intra-op thread count and the candidates, so a changed model,
device, thread count or torch recalibrates; so does a cached choice whose
measured peak memory exceeds the budget of this call (the budget itself, often
a share of the memory free now, is not in the key). A cache file that cannot be
read or does not match its key is recalibrated and rewritten, never an error.
Writes are atomic (:mod:`abcrown_plugins.fileio`).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from abcrown_plugins.errors import UserError
from abcrown_plugins.fileio import atomic_write_text

__all__ = ["CACHE_ENV", "Calibration", "Choice", "cache_folder", "cache_key", "choose_batch_size", "choose_option",
           "default_budget_mib", "model_digest", "peak_memory_mib"]

#: Environment variable that overrides the cache folder.
CACHE_ENV = "ABCROWN_PLUGINS_CACHE"
_FORMAT = 1


@dataclass(frozen=True)
class Calibration:
    """The batch size :func:`choose_batch_size` picked.

    Attributes:
        batch_size: The candidate with the smallest median seconds per sample.
        per_sample_s: Candidate -> median seconds per sample (only candidates that were timed).
        cached: True when read from the cache instead of measured now.
        peak_mib: Candidate -> measured peak memory growth in MiB (:func:`peak_memory_mib`).
        skipped: Candidates left out because their (estimated) peak memory exceeds the budget.
    """

    batch_size: int
    per_sample_s: dict[int, float]
    cached: bool
    peak_mib: dict[int, float] = field(default_factory=dict)
    skipped: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "per_sample_s": {str(k): v for k, v in self.per_sample_s.items()},
                "cached": self.cached, "peak_mib": {str(k): v for k, v in self.peak_mib.items()},
                "skipped": list(self.skipped)}


def cache_folder() -> Path:
    """``$ABCROWN_PLUGINS_CACHE``, else ``$XDG_CACHE_HOME/abcrown_plugins``, else ``~/.cache/abcrown_plugins``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "abcrown_plugins"


def model_digest(model: torch.nn.Module, weights: bool = True) -> str:
    """``sha256:...`` of a module's structure (its repr), every parameter's and buffer's name, dtype, shape,
    memory layout and, with ``weights``, values.

    Without ``weights`` the digest names what the speed of dense kernels depends
    on: a network pruned by masks or retrained keeps it, a compacted one (fewer
    channels) or one in another layout does not.
    """
    h = hashlib.sha256(repr(model).encode())
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:{t.stride()}".encode())
        if weights and t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def cache_key(workload: str, key: dict, candidates: Sequence[int]) -> dict[str, Any]:
    """The full key of a calibration: the caller's ``key`` plus workload, torch version, threads and candidates."""
    return {**{str(k): str(v) for k, v in key.items()}, "workload": workload, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "candidates": sorted(int(c) for c in candidates), "format": _FORMAT}


def _cache_path(folder: Path, workload: str, full_key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in workload)
    return folder / "calibration" / f"{safe}-{digest}.json"


def _read_cache(path: Path, full_key: dict) -> Calibration | None:
    """The cached calibration at ``path`` when it is well formed and was made under ``full_key``; else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["key"] != full_key:
            return None
        per = {int(k): float(v) for k, v in data["per_sample_s"].items()}
        b = int(data["batch_size"])
        if b not in per or b not in full_key["candidates"]:
            return None
        return Calibration(b, per, True, {int(k): float(v) for k, v in data.get("peak_mib", {}).items()},
                           tuple(int(s) for s in data.get("skipped", ())))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def peak_memory_mib(fn: Callable[[], None], device: torch.device | str = "cpu") -> float:
    """Run ``fn()``; the peak memory it added, MiB: CUDA allocator peak, or the growth of resident memory's
    high-water mark on Linux (``/proc/self/clear_refs``; elsewhere ``ru_maxrss``, 0 when an earlier peak was higher)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(torch.cuda.max_memory_allocated(device) - base, 0) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kb("VmRSS")
    except OSError:
        base = None
    if base is not None:
        fn()
        return max((_status_kb("VmHWM") or base) - base, 0) / 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, 0) / 1024


def default_budget_mib(device: torch.device | str = "cpu", fraction: float = 0.5) -> float | None:
    """``fraction`` of the memory free now, MiB: the CUDA device's free memory, or ``MemAvailable`` of
    ``/proc/meminfo`` on CPU; None where it cannot be read (no budget)."""
    device = torch.device(device)
    if device.type == "cuda":
        return fraction * torch.cuda.mem_get_info(device)[0] / 2**20
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return fraction * int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run: Callable[[int], None], b: int, device: torch.device) -> float:
    t0 = time.perf_counter()
    run(b)
    _sync(device)
    return time.perf_counter() - t0


def _measure(run: Callable[[int], None], candidates: list[int], budget_mib: float | None, reps: int,
             device: torch.device) -> tuple[dict[int, float], dict[int, float], tuple[int, ...]]:
    run(candidates[0])  # warm-up: lazy initialisation, first allocations
    _sync(device)
    times: dict[int, list[float]] = {c: [] for c in candidates}
    peak: dict[int, float] = {}
    skipped: list[int] = []
    active = list(candidates)
    for r in range(reps):
        order = active if r == 0 else active[r % len(active):] + active[:r % len(active)]
        for b in order:
            if r == 0:
                if peak and budget_mib is not None:
                    ref = max(peak)
                    if peak[ref] / ref * b > budget_mib:
                        skipped.append(b)
                        continue
                peak[b] = peak_memory_mib(lambda: times[b].append(_timed(run, b, device)), device)
                if budget_mib is not None and peak[b] > budget_mib:
                    skipped.append(b)
                continue
            times[b].append(_timed(run, b, device))
        active = [c for c in active if c not in skipped]
        if not active:
            break
    per = {b: statistics.median(ts) / b for b, ts in times.items() if ts and b not in skipped}
    return per, peak, tuple(sorted(set(skipped)))


def choose_batch_size(workload: str, run: Callable[[int], None], candidates: Sequence[int], *, key: dict,
                      budget_mib: float | None = None, cache_dir: Path | None = None, reps: int = 3,
                      device: torch.device | str = "cpu") -> Calibration:
    """The candidate batch size with the smallest median seconds per sample of ``run`` (module docstring).

    ``run(b)``: process one batch of ``b`` samples of the workload (its result is
    discarded). ``key``: what else the timing depends on (e.g. ``{"model":
    model_digest(m), "device": "cpu"}``). ``budget_mib``: peak memory a batch may
    add (None: no limit). ``cache_dir``: the cache folder (default
    :func:`cache_folder`). ``device``: where ``run`` computes (CUDA is
    synchronised around each timing and its allocator peak is the memory measure).
    Raises :class:`UserError` when no candidate fits the budget.
    """
    cands = sorted({int(c) for c in candidates})
    if not cands or cands[0] < 1:
        raise ValueError(f"candidates must be positive batch sizes, got {list(candidates)}")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    full_key = cache_key(workload, key, cands)
    path = _cache_path(Path(cache_dir) if cache_dir is not None else cache_folder(), workload, full_key)
    hit = _read_cache(path, full_key)
    if hit is not None and (budget_mib is None or hit.peak_mib.get(hit.batch_size, 0.0) <= budget_mib):
        return hit
    per, peak, skipped = _measure(run, cands, budget_mib, reps, torch.device(device))
    if not per:
        raise UserError(f"no batch size of {cands} fits the memory budget of {budget_mib:g} MiB for {workload} "
                        f"(the smallest needs {peak.get(cands[0], float('nan')):.0f} MiB); raise the budget or "
                        "set the batch size in the config")
    best = min(per, key=lambda b: (per[b], b))
    result = Calibration(best, per, False, peak, skipped)
    try:
        atomic_write_text(path, json.dumps({"key": full_key, **result.as_dict()}, indent=1, sort_keys=True))
    except (UserError, OSError):
        pass  # an unwritable cache only costs a recalibration next time
    return result


@dataclass(frozen=True)
class Choice:
    """The option :func:`choose_option` picked: its name, every option's median seconds, whether it was cached."""

    name: str
    seconds: dict[str, float]
    cached: bool


def choose_option(workload: str, options: dict[str, Callable[[], None]], *, key: dict,
                  cache_dir: Path | None = None, reps: int = 3, device: torch.device | str = "cpu") -> Choice:
    """The fastest of ``options`` (name -> one call of the same work done another way), cached as
    :func:`choose_batch_size` caches (same key completion, same folder, same recovery from a bad file).

    One untimed call of each, then ``reps`` interleaved rounds; the smallest
    median wins (ties: the first listed). Use it only for options that compute
    the same result (e.g. a memory layout).
    """
    names = list(options)
    if not names or reps < 1:
        raise ValueError("choose_option needs at least one option and reps >= 1")
    device = torch.device(device)
    full_key = {**cache_key(workload, key, []), "options": names}
    path = _cache_path(Path(cache_dir) if cache_dir is not None else cache_folder(), workload, full_key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["key"] == full_key and data["name"] in names:
            return Choice(str(data["name"]), {str(k): float(v) for k, v in data["seconds"].items()}, True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    for name in names:
        options[name]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            options[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    seconds = {n: statistics.median(ts) for n, ts in times.items()}
    best = min(names, key=lambda n: (seconds[n], names.index(n)))
    try:
        atomic_write_text(path, json.dumps({"key": full_key, "name": best, "seconds": seconds}, indent=1,
                                           sort_keys=True))
    except (UserError, OSError):
        pass
    return Choice(best, seconds, False)
