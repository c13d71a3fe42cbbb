"""Certified and standard training: standard, FGSM+GradAlign, IBP or CROWN-IBP, masked, resumable per epoch.

:func:`train` is a thin caller of the one training loop,
:func:`abcrown_plugins.training.loop.run_epochs`: it supplies a :class:`TrainStep`
(objective plus regulariser terms through :func:`backward_step`, the learning-rate and
radius schedules) and two hooks, the regularisers' ``after_backward(model)`` penalties and
the pruning mask re-applied after every optimiser step. The objective comes from
:func:`abcrown_plugins.training.objectives.make_objective`; regularisers
(``term(model, x, eps, bounds)`` loss terms and ``after_backward(model)`` penalties) are
passed in and never own the loop. A term receives the bounds the objective already
computed for the batch (IBP/CROWN-IBP training), else None.

After every epoch the model, optimiser and history are written atomically to
``state_path``; a run started again with the same ``run_key`` continues after the last
completed epoch. Data order depends only on (seed, epoch), torch is reseeded from
(seed, epoch) at every epoch and every schedule depends only on (epoch, step), so the
resumed run computes the same numbers as one that was never interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from abcrown_plugins.errors import UserError
from abcrown_plugins.pruning import Mask
from abcrown_plugins.training.loop import BatchStep, LoopHook, LoopSettings, run_epochs
from abcrown_plugins.training.objectives import TRAINING_METHODS, make_objective
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
    ibp_bn_stats: str = "centre"  # train-mode BatchNorm statistics of IBP bounds: centre or clean

    def __post_init__(self) -> None:
        if self.method not in TRAINING_METHODS:
            raise UserError(f"unknown training method '{self.method}' (valid: {', '.join(TRAINING_METHODS)})")
        if self.optimizer not in ("adam", "sgd"):
            raise UserError(f"unknown optimizer '{self.optimizer}' (valid: adam, sgd)")
        if self.epochs < 0 or self.batch_size < 1:
            raise UserError(f"training needs epochs >= 0 and batch_size >= 1, got {self.epochs} and {self.batch_size}")

    @classmethod
    def from_config(cls, cfg) -> "TrainSettings":
        t = cfg.training
        return cls(method=t.method, epochs=t.epochs, optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
                   weight_decay=t.weight_decay, lr_milestones=tuple(t.lr_milestones), lr_decay=t.lr_decay,
                   grad_clip=t.grad_clip, eps=t.eps, eps_warmup_epochs=t.eps_warmup_epochs,
                   eps_ramp_epochs=t.eps_ramp_epochs, eps_schedule=t.eps_schedule, robust_weight=t.robust_weight,
                   batch_size=cfg.data.batch_size, seed=cfg.general.seed, noise_sigma=t.noise_sigma,
                   fgsm_alpha=t.fgsm_alpha, fgsm_init=t.fgsm_init, grad_align=t.grad_align,
                   ibp_bn_stats=t.ibp_bn_stats)


def make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)


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


class TrainStep(BatchStep):
    """One batch of :func:`train`: the scheduled radius, ``zero_grad``, then :func:`backward_step`.

    At every epoch it sets the learning rate of ``lr_at(epoch)``; its row entries are the
    mean loss, the training accuracy (clean logits; adversarial ones for FGSM), the radius
    of the epoch's last step and the learning rate.
    """

    columns = ("loss", "train_acc")

    def __init__(self, s: TrainSettings, optimizer: torch.optim.Optimizer, num_classes: int,
                 steps_per_epoch: int, regularizers: Sequence = ()):
        self.s, self.optimizer, self.regularizers = s, optimizer, regularizers
        self.objective = make_objective(s, num_classes)
        self.scheduled = s.method != "standard"
        self.schedule = EpsSchedule(s.eps, s.eps_warmup_epochs, s.eps_ramp_epochs, steps_per_epoch, s.eps_schedule)
        self.lr, self.eps_t = s.lr, 0.0

    def begin_epoch(self, model: nn.Module, epoch: int) -> None:
        self.lr = lr_at(epoch, self.s.lr, self.s.lr_milestones, self.s.lr_decay)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.eps_t = 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, zero_grad: Callable[[], None],
                 epoch: int, step: int) -> dict[str, float]:
        self.eps_t = self.schedule(epoch, step) if self.scheduled else 0.0
        zero_grad()
        loss, logits = backward_step(model, self.objective, self.regularizers, x, y, self.eps_t,
                                     self.eps_t if self.scheduled else self.s.eps)
        return {"loss": loss.item() * y.numel(), "train_acc": float((logits.argmax(1) == y).sum())}

    def epoch_row(self, epoch: int) -> dict[str, Any]:
        return {"eps": self.eps_t, "lr": self.lr}


class RegularizerHook(LoopHook):
    """The regularisers' ``after_backward(model)`` (e.g. Network Slimming's L1 on gamma), in order."""

    def __init__(self, regularizers: Sequence):
        self.regularizers = regularizers

    def after_backward(self, model: nn.Module, step: int) -> None:
        for reg in self.regularizers:
            reg.after_backward(model)


class MaskHook(LoopHook):
    """Keeps pruned weights at zero: the mask is applied on resume and after every optimiser step."""

    def __init__(self, mask: Mask):
        self.mask = mask

    def resume(self, model: nn.Module, state: dict[str, Any] | None) -> None:
        self.mask.apply_(model)

    def after_step(self, model: nn.Module) -> None:
        self.mask.apply_(model)


def train(model: nn.Module, train_set, s: TrainSettings, device: torch.device, state_path: Path | None = None,
          run_key: str = "", mask: Mask | None = None, desc: str = "train", regularizers: Sequence = (),
          on_epoch_end: Callable[[int, nn.Module], None] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``s.epochs`` epochs; returns one history row per epoch.

    Rows: ``epoch, loss, train_acc, eps, lr, time_s``. ``regularizers``: objects with
    ``term(model, x, eps, bounds) -> Tensor`` (added to the loss) and
    ``after_backward(model)`` (called between backward and the optimiser step).
    ``on_epoch_end(epoch, model)`` runs after each completed epoch (1-based), before the
    resumable state is written. Every epoch reseeds torch from ``(seed, epoch)``, so random
    starts (FGSM) are the same in a resumed run.
    """
    model.to(device)
    optimizer = make_optimizer(model, s)
    steps = train_set.num_batches(s.batch_size)
    step = TrainStep(s, optimizer, train_set.info.num_classes, steps, regularizers)
    hooks: list[LoopHook] = [RegularizerHook(regularizers)]
    if mask is not None:
        hooks.append(MaskHook(mask))
    history = run_epochs(model, optimizer, step,
                         lambda seed: train_set.batches(s.batch_size, shuffle=True, seed=seed, device=device),
                         LoopSettings(s.epochs, steps, s.seed, s.grad_clip, s.noise_sigma, reseed_torch=True),
                         device, hooks, state_path, run_key, desc, on_epoch_end)
    for p in model.parameters():  # auto_LiRPA's parameter nodes toggle requires_grad
        p.requires_grad_(True)
    return history
