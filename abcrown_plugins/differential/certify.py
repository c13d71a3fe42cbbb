"""Randomized-smoothing counts and certificates through the differential engine.

Two ways to reuse the base network's work, both exact (the counts equal those
of :func:`abcrown_plugins.smoothing.certify.sample_counts` run on each dense
fine-tuned network with a generator in the same state, because the noisy
inputs are the same :func:`~abcrown_plugins.smoothing.certify.noise_batches`
and the engine's argmaxes equal the dense networks'). The noise stream does not
depend on the batch size, so neither do the counts: a trace replays its own
``batch_size`` and any batch size certifies alike.

- **Multi-task** (:func:`multitask_counts`, :func:`multitask_certify`): one noise
  draw, T networks; per noise batch the base prefix runs once for all T.
  ``multitask_certify(...)[t]`` equals ``certify(task_t, ...)`` with a
  generator in the same state (same prediction, radius, pA_lower, counts): the
  counts are the same and both decide with
  :func:`~abcrown_plugins.smoothing.certify.decide`.
- **Base trace** (:func:`record_trace`, :func:`trace_counts`,
  :func:`certify_from_traces`): the base's activations that the engine's tasks
  read, recorded once per noise batch (the work of certifying the base), then
  replayed for each task without touching the shared prefix again. The trace
  keeps the generator's starting state instead of the noisy inputs and
  regenerates them when a task changes the very first module. Memory:
  :attr:`BaseTrace.nbytes` (grows with ``num`` and with how early the tasks'
  first changes are). :func:`traced_certify` gives the same certificates and the
  same accounting without storing the trace (recorded and replayed batch by batch).
- **Side by side** (:func:`compare_certify`): one input certified by the dense
  certifier and by the engine in every accounting (live, trace, multi-task),
  each timed; any certificate that differs from the dense one raises
  :class:`ExactnessError`, so a difference is never reported as a result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor

from abcrown_plugins.differential.engine import DifferentialEngine
from abcrown_plugins.errors import UserError
from abcrown_plugins.runtime import progress
from abcrown_plugins.smoothing.certify import (SmoothingResult, certify, check_settings, class_counts, decide,
                                               noise_batches)


def _tasks(engine: DifferentialEngine, tasks: Sequence[int] | None) -> list[int]:
    ts = list(range(engine.num_tasks)) if tasks is None else list(tasks)
    bad = [t for t in ts if not 0 <= t < engine.num_tasks]
    if bad:
        raise UserError(f"task index {bad[0]} out of range (the engine holds {engine.num_tasks} tasks)")
    return ts


@torch.no_grad()
def multitask_counts(engine: DifferentialEngine, x: Tensor, num: int, sigma: float, batch_size: int,
                     generator: torch.Generator, tasks: Sequence[int] | None = None,
                     desc: str | None = "noise batches") -> list[Tensor]:
    """Per task, per-class counts (int64, CPU) of ``argmax task(x + noise)`` over ``num`` samples of one draw.

    ``x``: one image ``C x H x W`` in [0,1]. Consumes ``generator`` exactly as one
    ``sample_counts(..., num, ...)`` call does. ``desc``: the progress bar's label
    (None: no bar, as the dense ``sample_counts``).
    """
    ts = _tasks(engine, tasks)
    counts = [torch.zeros(engine.num_classes(t, x.shape), dtype=torch.int64) for t in ts]
    total = -(-num // batch_size)
    batches = noise_batches(x, num, sigma, batch_size, generator, reuse=True)
    for batch in (batches if desc is None else progress(batches, desc, total)):
        for c, logits in zip(counts, engine.forward(batch, ts)):
            c += class_counts(logits, c.numel())
    return counts


def multitask_certify(engine: DifferentialEngine, x: Tensor, n0: int, n: int, alpha: float, sigma: float,
                      batch_size: int, generator: torch.Generator,
                      tasks: Sequence[int] | None = None, bars: bool = True) -> list[SmoothingResult]:
    """CERTIFY of Cohen et al. for every task on one input, from one shared noise draw.

    Entry t equals ``certify(task_t, x, n0, n, alpha, sigma, classes_t, batch_size, g)``
    for a generator ``g`` in the state ``generator`` had (same selection and
    estimation samples). ``time_s`` of every entry is the wall time of the whole
    shared pass. ``bars``: progress bars over the noise batches.
    """
    check_settings(sigma, alpha, n, n0, batch_size)
    t0 = time.perf_counter()
    sel = multitask_counts(engine, x, n0, sigma, batch_size, generator, tasks, "selection" if bars else None)
    est = multitask_counts(engine, x, n, sigma, batch_size, generator, tasks, "estimation" if bars else None)
    seconds = time.perf_counter() - t0
    return [decide(s, c, n0, n, alpha, sigma, seconds) for s, c in zip(sel, est)]


# ---------------------------------------------------------------------------------------------
# base traces


@dataclass
class BaseTrace:
    """The base activations of one noise draw, per batch, for replaying tasks (see module doc)."""

    x: Tensor
    num: int
    sigma: float
    batch_size: int
    generator_state: Tensor
    generator_device: str
    batches: list[dict[str, Tensor]]
    record_s: float

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for b in self.batches for v in b.values())

    def noise(self) -> Iterator[Tensor]:
        """The trace's noisy input batches again, regenerated from the saved generator state."""
        g = torch.Generator(device=self.generator_device)
        g.set_state(self.generator_state)
        return noise_batches(self.x, self.num, self.sigma, self.batch_size, g)


@torch.no_grad()
def record_trace(engine: DifferentialEngine, x: Tensor, num: int, sigma: float, batch_size: int,
                 generator: torch.Generator, tasks: Sequence[int] | None = None) -> BaseTrace:
    """Run the base on ``num`` noisy copies of ``x`` and keep what ``tasks`` (default: all) read.

    Consumes ``generator`` exactly as ``sample_counts(..., num, ...)`` does.
    """
    check_settings(sigma, 0.5, num, None, batch_size)
    ts = _tasks(engine, tasks)
    state = generator.get_state().clone()
    t0 = time.perf_counter()
    batches = []
    total = -(-num // batch_size)
    for batch in progress(noise_batches(x, num, sigma, batch_size, generator), "base trace", total):
        rec = engine.base_activations(batch, ts, mode="trace")
        rec.pop("input", None)  # regenerated on demand instead of stored
        batches.append(rec)
    return BaseTrace(x, num, float(sigma), batch_size, state, str(generator.device), batches,
                     time.perf_counter() - t0)


class _Replay:
    """Noisy batches of a trace, regenerated in order on demand (when a task reads the input itself)."""

    def __init__(self, trace: BaseTrace):
        self._it = trace.noise()
        self._pos = -1
        self._cur: Tensor | None = None

    def get(self, j: int) -> Tensor:
        if j < self._pos:
            raise RuntimeError("trace batches are replayed in order")
        while self._pos < j:
            self._cur = next(self._it)
            self._pos += 1
        return self._cur


@torch.no_grad()
def trace_counts(engine: DifferentialEngine, trace: BaseTrace, tasks: Sequence[int] | None = None,
                 desc: str = "trace replay") -> list[Tensor]:
    """Per task, the counts ``multitask_counts`` would give on the trace's noise draw, from the trace."""
    ts = _tasks(engine, tasks)
    wants_input = any("input" in p.base_paths for p in engine.plans(trace.x.shape, "trace"))
    counts = [torch.zeros(engine.num_classes(t, trace.x.shape), dtype=torch.int64) for t in ts]
    replay = _Replay(trace)
    for j, rec in enumerate(progress(trace.batches, desc, len(trace.batches))):
        if wants_input:
            rec = dict(rec, input=replay.get(j))
        for c, logits in zip(counts, engine.forward_from(rec, trace.x.shape, ts, "trace")):
            c += class_counts(logits, c.numel())
    return counts


def record_certify_traces(engine: DifferentialEngine, x: Tensor, n0: int, n: int, sigma: float, batch_size: int,
                          generator: torch.Generator,
                          tasks: Sequence[int] | None = None) -> tuple[BaseTrace, BaseTrace]:
    """The selection (``n0``) and estimation (``n``) traces of one ``certify`` call's noise."""
    check_settings(sigma, 0.5, n, n0, batch_size)
    return (record_trace(engine, x, n0, sigma, batch_size, generator, tasks),
            record_trace(engine, x, n, sigma, batch_size, generator, tasks))


def certify_from_traces(engine: DifferentialEngine, selection: BaseTrace, estimation: BaseTrace, alpha: float,
                        tasks: Sequence[int] | None = None) -> list[SmoothingResult]:
    """Certificates of ``tasks`` from recorded base traces; equal to :func:`multitask_certify`'s.

    ``time_s`` is the replay's wall time (the traces' recording is the base's
    work, reported in :attr:`BaseTrace.record_s`).
    """
    check_settings(estimation.sigma, alpha, estimation.num, selection.num, estimation.batch_size)
    t0 = time.perf_counter()
    sel = trace_counts(engine, selection, tasks, "selection replay")
    est = trace_counts(engine, estimation, tasks, "estimation replay")
    seconds = time.perf_counter() - t0
    return [decide(s, c, selection.num, estimation.num, alpha, estimation.sigma, seconds)
            for s, c in zip(sel, est)]


# ---------------------------------------------------------------------------------------------
# streamed traces and the side-by-side comparison


@torch.no_grad()
def _traced_counts(engine: DifferentialEngine, x: Tensor, num: int, sigma: float, batch_size: int,
                   generator: torch.Generator, ts: list[int]) -> tuple[list[Tensor], float, list[float]]:
    """Per task the counts of ``num`` noisy copies of ``x``, the seconds of recording the base's activations
    (noise drawn and base run once for all ``ts``) and, per task, of replaying them."""
    plans = engine.plans(x.shape, "trace")
    reads_input = ["input" in plans[t].base_paths for t in ts]
    counts = [torch.zeros(engine.num_classes(t, x.shape), dtype=torch.int64) for t in ts]
    record, replay = 0.0, [0.0] * len(ts)
    batches = noise_batches(x, num, sigma, batch_size, generator, reuse=True)
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        noise_s = time.perf_counter() - t0
        rec = engine.base_activations(batch, ts, mode="trace")
        record += time.perf_counter() - t0
        for i, t in enumerate(ts):
            t1 = time.perf_counter()
            logits = engine.forward_from(rec, x.shape, [t], "trace")[0]
            counts[i] += class_counts(logits, counts[i].numel())
            # a task that reads the input itself regenerates the noise when it replays a stored trace
            replay[i] += time.perf_counter() - t1 + (noise_s if reads_input[i] else 0.0)
    return counts, record, replay


def traced_certify(engine: DifferentialEngine, x: Tensor, n0: int, n: int, alpha: float, sigma: float,
                   batch_size: int, generator: torch.Generator,
                   tasks: Sequence[int] | None = None) -> tuple[list[SmoothingResult], float, list[float]]:
    """The certificates of :func:`certify_from_traces` on the noise of one ``certify`` call, without storing
    the trace: ``(results, record_s, replay_s)``.

    Batch by batch the base's activations that ``tasks`` read are recorded once
    (``record_s``: the base's own certification work, drawing the noise included)
    and every task replays them (``replay_s[t]``, with the task's decision; a
    task that reads the input itself is charged the noise it would regenerate).
    Entry t equals ``certify(task_t, x, n0, n, alpha, sigma, classes_t, batch_size, g)``
    for a generator ``g`` in the state ``generator`` had; ``time_s`` of entry t is
    ``replay_s[t]``. Memory: one batch of base activations.
    """
    check_settings(sigma, alpha, n, n0, batch_size)
    ts = _tasks(engine, tasks)
    sel, rec_sel, rep_sel = _traced_counts(engine, x, n0, sigma, batch_size, generator, ts)
    est, rec_est, rep_est = _traced_counts(engine, x, n, sigma, batch_size, generator, ts)
    results, replay = [], []
    for i in range(len(ts)):
        t0 = time.perf_counter()
        r = decide(sel[i], est[i], n0, n, alpha, sigma, 0.0)
        seconds = rep_sel[i] + rep_est[i] + time.perf_counter() - t0
        results.append(SmoothingResult(**{**r.as_dict(), "time_s": seconds}))
        replay.append(seconds)
    return results, rec_sel + rec_est, replay


class ExactnessError(RuntimeError):
    """The engine's certificate of a network differs from the dense certifier's on the same noise.

    The engine is exact by construction up to float32 rounding behind a near-tie
    guard (:mod:`.engine`); a difference is a bug, never a result to report.
    """


@dataclass(frozen=True)
class Compared:
    """One input certified by the dense certifier and by the engine in each accounting, all on one noise draw.

    ``results[t]``: task t's certificate (the dense certifier's; every engine
    accounting returned the same prediction, radius, ``pA_lower`` and counts).
    Wall seconds of CERTIFY (selection, estimation, decision):

    - ``dense_s[t]``: the dense certifier on task t;
    - ``live_s[t]``: the engine on task t alone, the base prefix recomputed per batch;
    - ``trace_s[t]``: the engine replaying the base's recorded activations for task t
      (seed 000's reuse of the pretraining certification);
    - ``record_s``: recording those activations once for all tasks (the base's own work);
    - ``multitask_s``: one shared engine pass for all tasks (None with one task).
    """

    results: list[SmoothingResult]
    dense_s: list[float]
    live_s: list[float]
    trace_s: list[float]
    record_s: float
    multitask_s: float | None


def _same(a: SmoothingResult, b: SmoothingResult) -> bool:
    return (a.prediction, a.radius, a.pA_lower, a.counts) == (b.prediction, b.radius, b.pA_lower, b.counts)


def compare_certify(engine: DifferentialEngine, x: Tensor, n0: int, n: int, alpha: float, sigma: float,
                    batch_size: int, generator: Callable[[], torch.Generator], order: int = 0) -> Compared:
    """Certify ``x`` for every task of ``engine`` densely and with the engine (live, trace, multi-task).

    ``generator()`` returns a fresh generator in the input's noise state (e.g.
    :func:`abcrown_plugins.smoothing.run.example_generator`); every accounting
    draws the same noise. The four accountings run one after the other,
    starting at ``order % 4`` (pass the example index so that none is always
    first). The dense certifier runs ``engine.tasks[t]`` itself. Raises
    :class:`ExactnessError` when any engine certificate differs from the
    dense one; otherwise returns the dense certificates with the timings
    (:class:`Compared`).
    """
    check_settings(sigma, alpha, n, n0, batch_size)
    ts = list(range(engine.num_tasks))
    classes = [engine.num_classes(t, x.shape) for t in ts]
    got: dict[str, object] = {}

    def dense() -> None:
        res, secs = [], []
        for t in ts:
            t0 = time.perf_counter()
            res.append(certify(engine.tasks[t], x, n0, n, alpha, sigma, classes[t], batch_size, generator()))
            secs.append(time.perf_counter() - t0)
        got["dense"] = (res, secs)

    def live() -> None:
        res, secs = [], []
        for t in ts:
            t0 = time.perf_counter()
            res.append(multitask_certify(engine, x, n0, n, alpha, sigma, batch_size, generator(), [t], False)[0])
            secs.append(time.perf_counter() - t0)
        got["live"] = (res, secs)

    def trace() -> None:
        res, record_s, secs = traced_certify(engine, x, n0, n, alpha, sigma, batch_size, generator())
        got["trace"] = (res, secs)
        got["record_s"] = record_s

    def multitask() -> None:
        if len(ts) > 1:
            t0 = time.perf_counter()
            res = multitask_certify(engine, x, n0, n, alpha, sigma, batch_size, generator(), bars=False)
            got["multitask"] = (res, time.perf_counter() - t0)

    steps = [dense, live, trace, multitask]
    k = order % len(steps)
    for step in steps[k:] + steps[:k]:
        step()
    reference, dense_s = got["dense"]
    for mode in ("live", "trace", "multitask"):
        if mode not in got:
            continue
        for t, (d, e) in enumerate(zip(reference, got[mode][0])):
            if not _same(d, e):
                raise ExactnessError(
                    f"the differential engine ({mode}) certified task {t} as class {e.prediction}, radius "
                    f"{e.radius:.6g}, counts {e.counts}, but the dense certifier on the same noise gives class "
                    f"{d.prediction}, radius {d.radius:.6g}, counts {d.counts}; this is a bug of the engine: "
                    f"certify with smoothing.engine dense and report it")
    return Compared(reference, dense_s, got["live"][1], got["trace"][1], got["record_s"],
                    got["multitask"][1] if "multitask" in got else None)
