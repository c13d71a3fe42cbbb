"""The training loop: standard, FGSM+GradAlign, IBP or CROWN-IBP training, masked, resumable per epoch.

The objective comes from :func:`abcrown_plugins.training.objectives.make_objective`;
regularisers (``term(model, x, eps, bounds)`` loss terms and ``after_backward(model)``
penalties) are passed in and never own the loop. A term receives the bounds the
objective already computed for the batch (IBP/CROWN-IBP training), else None.

After every epoch the model, optimiser and history are written atomically to
``state_path``; a run started again with the same ``run_key`` continues after
the last completed epoch. Data order depends only on (seed, epoch) and every
schedule only on (epoch, step), so the resumed run computes the same numbers
as one that was never interrupted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from abcrown_plugins import checkpoints
from abcrown_plugins.pruning import Mask
from abcrown_plugins.runtime import progress
from abcrown_plugins.training.objectives import make_objective
from abcrown_plugins.training.schedule import EpsSchedule, lr_at


@dataclass(frozen=True)
class TrainSettings:
    """What the loop needs, converted from the config's ``training`` and ``data`` sections."""

    method: str
    epochs: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    lr_milestones: tuple[int, ...]
    lr_decay: float
    grad_clip: float
    eps: float
    eps_warmup_epochs: int
    eps_ramp_epochs: int
    eps_schedule: str
    robust_weight: float
    batch_size: int
    seed: int
    noise_sigma: float = 0.0  # Gaussian augmentation (randomized smoothing), [0,1] pixel units
    fgsm_alpha: float = 1.25  # FGSM step in units of the current eps
    fgsm_init: str = "random"
    grad_align: float = 0.2   # GradAlign coefficient lambda

    @classmethod
    def from_config(cls, cfg) -> "TrainSettings":
        t = cfg.training
        return cls(t.method, t.epochs, t.optimizer, t.lr, t.momentum, t.weight_decay, tuple(t.lr_milestones),
                   t.lr_decay, t.grad_clip, t.eps, t.eps_warmup_epochs, t.eps_ramp_epochs, t.eps_schedule,
                   t.robust_weight, cfg.data.batch_size, cfg.general.seed, noise_sigma=t.noise_sigma,
                   fgsm_alpha=t.fgsm_alpha, fgsm_init=t.fgsm_init, grad_align=t.grad_align)


def make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)


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


def backward_step(model: nn.Module, objective, regularizers: Sequence, x: torch.Tensor, y: torch.Tensor,
                  eps_t: float, reg_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of one batch: objective plus regulariser terms; returns ``(loss, logits)``.

    Gradients accumulate into ``.grad`` (the caller zeroes them and steps). When the
    objective computed no bounds (standard, FGSM, or ``eps_t == 0``) a stability term runs
    an IBP pass of its own; the objective's graph is then backpropagated and freed before
    that pass is built: the same gradients (a sum of the two), a lower peak memory, and a
    few percent less time on CPU.
    """
    out = objective(model, x, y, eps_t)
    if out.bounds is None and regularizers:
        out.loss.backward()
        loss = out.loss.detach()
        extra = [reg.term(model, x, reg_eps, None) for reg in regularizers]
        extra = [t for t in extra if t.requires_grad]
        if extra:
            total = torch.stack(extra).sum()
            total.backward()
            loss = loss + total.detach()
        return loss, out.logits
    loss = out.loss
    for reg in regularizers:
        loss = loss + reg.term(model, x, reg_eps, out.bounds)
    loss.backward()
    return loss.detach(), out.logits


def train(model: nn.Module, train_set, s: TrainSettings, device: torch.device, state_path: Path | None = None,
          run_key: str = "", mask: Mask | None = None, desc: str = "train", regularizers: Sequence = (),
          on_epoch_end: Callable[[int, nn.Module], None] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``s.epochs`` epochs; returns one history row per epoch.

    ``regularizers``: objects with ``term(model, x, eps, bounds) -> Tensor`` (added to the
    loss) and ``after_backward(model)`` (called between backward and the optimiser step).
    ``on_epoch_end(epoch, model)`` runs after each completed epoch (1-based), before the
    resumable state is written. Every epoch reseeds torch from ``(seed, epoch)``, so random
    starts (FGSM) are the same in a resumed run.
    """
    model.to(device)
    optimizer = make_optimizer(model, s)
    history, start_epoch, _ = resume_state(state_path, run_key, model, optimizer, device)
    if mask is not None:
        mask.apply_(model)
    num_classes = train_set.info.num_classes
    objective = make_objective(s, num_classes)
    scheduled = s.method != "standard"
    steps = train_set.num_batches(s.batch_size)
    schedule = EpsSchedule(s.eps, s.eps_warmup_epochs, s.eps_ramp_epochs, steps, s.eps_schedule)
    for epoch in range(start_epoch, s.epochs):
        lr = lr_at(epoch, s.lr, s.lr_milestones, s.lr_decay)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        torch.manual_seed(s.seed * 100003 + epoch * 7919 + 1)
        t0 = time.perf_counter()
        tot_loss = tot_correct = tot_n = 0.0
        eps_t = 0.0
        batches = train_set.batches(s.batch_size, shuffle=True, seed=s.seed * 100003 + epoch, device=device)
        bar = progress(batches, desc=f"{desc} epoch {epoch + 1}/{s.epochs}", total=steps)
        # Gaussian augmentation: noise drawn from (seed, epoch) only, so a resumed run draws the same noise
        noise_gen = torch.Generator(device=device).manual_seed(s.seed * 100003 + epoch) if s.noise_sigma > 0 else None
        for step, (x, y) in enumerate(bar):
            if noise_gen is not None:
                x = x + s.noise_sigma * torch.randn(x.shape, generator=noise_gen, device=x.device)
            eps_t = schedule(epoch, step) if scheduled else 0.0
            optimizer.zero_grad(set_to_none=True)
            loss, logits = backward_step(model, objective, regularizers, x, y, eps_t,
                                         eps_t if scheduled else s.eps)
            for reg in regularizers:
                reg.after_backward(model)
            if s.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            optimizer.step()
            if mask is not None:
                mask.apply_(model)
            tot_loss += loss.item() * y.numel()
            tot_correct += float((logits.argmax(1) == y).sum())
            tot_n += y.numel()
        history.append({"epoch": epoch + 1, "loss": tot_loss / tot_n, "train_acc": tot_correct / tot_n,
                        "eps": eps_t, "lr": lr, "time_s": time.perf_counter() - t0})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model)
        if state_path is not None:
            checkpoints.save(state_path, {"run_key": run_key, "epoch": epoch + 1, "model": model.state_dict(),
                                          "optimizer": optimizer.state_dict(), "history": history})
    for p in model.parameters():  # auto_LiRPA's parameter nodes toggle requires_grad
        p.requires_grad_(True)
    return history
