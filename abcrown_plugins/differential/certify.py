"""Randomized-smoothing counts and certificates through the differential engine.

Two ways to reuse the base network's work, both exact (the counts equal those
of :func:`abcrown_plugins.smoothing.certify.sample_counts` run on each dense
fine-tuned network with a generator in the same state, because the noisy
inputs are the same :func:`~abcrown_plugins.smoothing.certify.noise_batches`
and the engine's argmaxes equal the dense networks'):

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
  first changes are).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor

from abcrown_plugins.differential.engine import DifferentialEngine
from abcrown_plugins.errors import UserError
from abcrown_plugins.runtime import progress
from abcrown_plugins.smoothing.certify import SmoothingResult, check_settings, class_counts, decide, noise_batches


def _tasks(engine: DifferentialEngine, tasks: Sequence[int] | None) -> list[int]:
    ts = list(range(engine.num_tasks)) if tasks is None else list(tasks)
    bad = [t for t in ts if not 0 <= t < engine.num_tasks]
    if bad:
        raise UserError(f"task index {bad[0]} out of range (the engine holds {engine.num_tasks} tasks)")
    return ts


@torch.no_grad()
def multitask_counts(engine: DifferentialEngine, x: Tensor, num: int, sigma: float, batch_size: int,
                     generator: torch.Generator, tasks: Sequence[int] | None = None,
                     desc: str = "noise batches") -> list[Tensor]:
    """Per task, per-class counts (int64, CPU) of ``argmax task(x + noise)`` over ``num`` samples of one draw.

    ``x``: one image ``C x H x W`` in [0,1]. Consumes ``generator`` exactly as one
    ``sample_counts(..., num, ...)`` call does.
    """
    ts = _tasks(engine, tasks)
    counts = [torch.zeros(engine.num_classes(t, x.shape), dtype=torch.int64) for t in ts]
    total = -(-num // batch_size)
    for batch in progress(noise_batches(x, num, sigma, batch_size, generator), desc, total):
        for c, logits in zip(counts, engine.forward(batch, ts)):
            c += class_counts(logits, c.numel())
    return counts


def multitask_certify(engine: DifferentialEngine, x: Tensor, n0: int, n: int, alpha: float, sigma: float,
                      batch_size: int, generator: torch.Generator,
                      tasks: Sequence[int] | None = None) -> list[SmoothingResult]:
    """CERTIFY of Cohen et al. for every task on one input, from one shared noise draw.

    Entry t equals ``certify(task_t, x, n0, n, alpha, sigma, classes_t, batch_size, g)``
    for a generator ``g`` in the state ``generator`` had (same selection and
    estimation samples). ``time_s`` of every entry is the wall time of the whole
    shared pass.
    """
    check_settings(sigma, alpha, n, n0, batch_size)
    t0 = time.perf_counter()
    sel = multitask_counts(engine, x, n0, sigma, batch_size, generator, tasks, "selection")
    est = multitask_counts(engine, x, n, sigma, batch_size, generator, tasks, "estimation")
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
