"""The one training loop: epochs of batches, a step function, small hooks, resumable per epoch.

:func:`run_epochs` owns what every training run shares and nothing else: the data order
and the Gaussian augmentation (both drawn from ``(seed, epoch)`` only), optionally
reseeding torch at every epoch, zeroing gradients, gradient clipping, the optimiser step,
per-epoch history rows and the resumable state. What differs between runs comes in as

* a :class:`BatchStep`: the forward and backward pass of one batch (objective and loss
  terms), what it does at the start of an epoch (learning rate, frozen BatchNorm) and the
  history entries it adds (per-batch sums, averaged per example, plus epoch values);
* :class:`LoopHook` objects: ``after_backward(model, step)`` between backward and
  clipping (penalties on ``.grad``, gradient masks, RigL), ``after_step(model)`` after
  the optimiser step (re-applying a mask, projecting a sparse delta), and state of their
  own that is saved with the loop's and handed back on resume.

Per batch, in this order: Gaussian noise on ``x``; the step (which calls ``zero_grad``
once before its backward, so a step may compute its loss before or after zeroing); every
hook's ``after_backward``; clipping to ``grad_clip`` (if > 0); ``optimizer.step()``;
every hook's ``after_step``. After every epoch ``on_epoch_end(epoch, model)`` runs, then
``{run_key, epoch, model, optimizer, history, **hook state}`` is written atomically to
``state_path``; a run started again with the same ``run_key`` continues after the last
completed epoch and computes the same numbers as one that was never interrupted, as long
as the step and the hooks depend only on ``(epoch, step)`` and on state they save.

A run that diverges stops with a UserError: a non-finite batch sum (loss) is caught
before its optimiser step, a non-finite weight or buffer at the end of the epoch before
``on_epoch_end`` and the state write, so the state on disk stays the last good epoch's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from abcrown_plugins import checkpoints
from abcrown_plugins.errors import UserError
from abcrown_plugins.numerics import require_finite
from abcrown_plugins.runtime import progress

#: How a diverged run is told to go on (loop errors end with it).
DIVERGED_FIX = ("nothing of this epoch was saved; lower the learning rate or turn on gradient clipping "
                "(training.grad_clip), then run again")

__all__ = ["BatchStep", "LoopHook", "LoopSettings", "epoch_seed", "resume_state", "run_epochs"]


@dataclass(frozen=True)
class LoopSettings:
    """``epochs``; ``steps_per_epoch`` (batches per epoch: progress total and the global step);
    ``seed`` (data order, noise, reseeding); ``grad_clip`` (max gradient norm, 0: off);
    ``noise_sigma`` (Gaussian augmentation in [0,1] pixel units, 0: off); ``reseed_torch``
    (``torch.manual_seed`` from ``(seed, epoch)`` at the start of every epoch, for steps
    that draw from torch's global generator, e.g. FGSM's random start)."""

    epochs: int
    steps_per_epoch: int
    seed: int
    grad_clip: float = 0.0
    noise_sigma: float = 0.0
    reseed_torch: bool = False


class BatchStep:
    """One batch's forward and backward pass, and its share of an epoch's history row.

    Subclasses implement :meth:`__call__`; the other members default to doing nothing.
    """

    #: names of the per-batch sums :meth:`__call__` returns; the row holds each divided
    #: by the number of examples of the epoch, in this order
    columns: tuple[str, ...] = ("loss",)

    def begin_epoch(self, model: nn.Module, epoch: int) -> None:
        """Called at the start of every epoch (0-based), after ``model.train()``."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, zero_grad: Callable[[], None], epoch: int,
                 step: int) -> dict[str, float]:
        """Backpropagate the batch's loss into ``.grad``; call ``zero_grad()`` once before the backward.

        Returns the batch's sums over its examples, one per name in :attr:`columns`.
        """
        raise NotImplementedError

    def epoch_row(self, epoch: int) -> dict[str, Any]:
        """History entries after the averaged columns (e.g. the last radius, the learning rate)."""
        return {}


class LoopHook:
    """Hook points of :func:`run_epochs`; every method does nothing here, override what you need."""

    def resume(self, model: nn.Module, state: dict[str, Any] | None) -> None:
        """Called once before the first epoch, after the loop loaded ``state`` (None for a fresh run)."""

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Between the backward pass and clipping; ``step`` counts batches from 0 over the whole run."""

    def after_step(self, model: nn.Module) -> None:
        """After the optimiser step."""

    def extra_state(self) -> dict[str, Any]:
        """Entries written into the per-epoch state (tensors and plain data), read back in :meth:`resume`."""
        return {}


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order and noise: a function of ``(seed, epoch)`` only."""
    return seed * 100003 + epoch


def resume_state(state_path: Path | None, run_key: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device) -> tuple[list[dict[str, Any]], int, dict[str, Any] | None]:
    """Load a run's per-epoch state into ``model`` and ``optimizer`` if ``state_path`` holds ``run_key``'s.

    Returns ``(history, epochs done, the whole state or None)``; state of another run is ignored.
    """
    if state_path is None or not Path(state_path).is_file():
        return [], 0, None
    state = checkpoints.load(state_path, map_location=device)
    if state.get("run_key") != run_key:
        return [], 0, None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return list(state["history"]), int(state["epoch"]), state


def run_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, step: BatchStep,
               batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]], s: LoopSettings, device,
               hooks: Sequence[LoopHook] = (), state_path: Path | None = None, run_key: str = "",
               desc: str = "train", on_epoch_end: Callable[[int, nn.Module], None] | None = None
               ) -> list[dict[str, Any]]:
    """Train ``model`` (already on ``device``, ``optimizer`` over its parameters) for ``s.epochs`` epochs.

    ``batches(seed)``: the epoch's ``(x, y)`` batches on ``device``, in an order drawn from
    ``seed`` (:func:`epoch_seed`) only. Returns the history, one row per epoch:
    ``{"epoch" (1-based), *step.columns, *step.epoch_row(epoch), "time_s"}``, earlier rows
    from the resumed state included. Order of operations: module docstring.
    """
    history, start_epoch, state = resume_state(state_path, run_key, model, optimizer, device)
    for hook in hooks:
        hook.resume(model, state)

    def zero_grad() -> None:
        optimizer.zero_grad(set_to_none=True)

    for epoch in range(start_epoch, s.epochs):
        model.train()
        step.begin_epoch(model, epoch)
        if s.reseed_torch:
            torch.manual_seed(s.seed * 100003 + epoch * 7919 + 1)
        t0 = time.perf_counter()
        sums = dict.fromkeys(step.columns, 0.0)
        seen = 0
        seed = epoch_seed(s.seed, epoch)
        bar = progress(batches(seed), desc=f"{desc} epoch {epoch + 1}/{s.epochs}", total=s.steps_per_epoch)
        noise_gen = torch.Generator(device=device).manual_seed(seed) if s.noise_sigma > 0 else None
        for i, (x, y) in enumerate(bar):
            if noise_gen is not None:
                x = x + s.noise_sigma * torch.randn(x.shape, generator=noise_gen, device=x.device)
            stats = step(model, x, y, zero_grad, epoch, i)
            for name in step.columns:
                if not math.isfinite(stats[name]):
                    raise UserError(f"{desc}: training diverged in epoch {epoch + 1}, batch {i + 1}: {name} is "
                                    f"{stats[name]}; {DIVERGED_FIX}")
            for hook in hooks:
                hook.after_backward(model, epoch * s.steps_per_epoch + i)
            if s.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            optimizer.step()
            for hook in hooks:
                hook.after_step(model)
            for name in step.columns:
                sums[name] += stats[name]
            seen += x.shape[0]
        row: dict[str, Any] = {"epoch": epoch + 1, **{k: v / max(seen, 1) for k, v in sums.items()},
                               **step.epoch_row(epoch), "time_s": time.perf_counter() - t0}
        require_finite(model.state_dict(), f"{desc}: the network after epoch {epoch + 1}",
                       f"training diverged; {DIVERGED_FIX}")
        history.append(row)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model)
        if state_path is not None:
            payload = {"run_key": run_key, "epoch": epoch + 1, "model": model.state_dict(),
                       "optimizer": optimizer.state_dict(), "history": history}
            for hook in hooks:
                payload.update(hook.extra_state())
            checkpoints.save(state_path, payload)
    return history
