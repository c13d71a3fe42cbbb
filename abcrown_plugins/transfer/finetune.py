"""Training runs of the transfer scenario: multi-head pretraining and sparse-delta fine-tuning.

:func:`fit` trains a model on ``(images, targets)`` with any ``loss_fn``,
Gaussian augmentation (``noise_sigma``, for randomized smoothing), gradient
clipping and Adam, through the one training loop
(:func:`abcrown_plugins.training.loop.run_epochs`): it supplies a :class:`FitStep`
(``loss_fn`` plus the DiffStab term, the loss computed before the gradients are
zeroed) and hooks. It is resumable per epoch (model, optimizer, mask and
history written atomically to ``state_path``; data order and noise depend only
on ``(seed, epoch)``; torch's global generator is not reseeded).

With a :class:`SparseDelta` it fine-tunes ``weights = pretrained + delta``; the
:class:`SparseDelta` is itself a loop hook: after every backward pass the gradient
outside the mask is zeroed, and after every step the entries outside the mask are
reset to the pretrained values, so they equal the pretrained weights *bit for bit*
(the differential verifier relies on it). BatchNorm layers stay in eval mode
(running statistics frozen at the pretrained ones) whenever ``freeze_bn`` is set,
which every transfer run does. RigL (:class:`~abcrown_plugins.transfer.rigl.RigLHook`,
a hook that runs before the gradient mask) updates the mask every ``rigl_interval``
steps and DiffStab (:class:`~abcrown_plugins.transfer.diffstab.DiffStabTerm`, a loss
term) is added to the loss, each when enabled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from abcrown_plugins.errors import UserError
from abcrown_plugins.training.loop import BatchStep, LoopHook, LoopSettings, run_epochs
from abcrown_plugins.transfer.diffstab import DiffStabTerm
from abcrown_plugins.transfer.masks import UnitLayout
from abcrown_plugins.transfer.rigl import RigLHook

__all__ = ["FitSettings", "FitStep", "SparseDelta", "accuracy", "fit", "gradient_scores", "reinit_classifier"]


@dataclass(frozen=True)
class FitSettings:
    """epochs, Adam ``lr``, ``batch_size``, ``seed`` (data order, noise), ``noise_sigma`` in [0,1] pixels."""

    epochs: int
    lr: float
    batch_size: int
    seed: int
    noise_sigma: float = 0.0
    grad_clip: float = 8.0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr < 0 or self.noise_sigma < 0:
            raise UserError(f"fine-tuning needs epochs >= 0, batch_size >= 1, lr >= 0 and noise_sigma >= 0 "
                            f"(got {self.epochs}, {self.batch_size}, {self.lr:g}, {self.noise_sigma:g})")


@dataclass
class SparseDelta(LoopHook):
    """A sparse delta over pretrained weights: mask, the pretrained values, and RigL settings.

    ``base`` holds the pretrained value of every masked parameter (all but the
    classifier); ``mask`` every parameter (classifier entries True). As a loop hook it
    masks the gradients after backward, projects after every step, saves ``mask`` and
    ``rigl_updates`` with the loop's state and restores them (then projects) on resume.
    """

    layout: UnitLayout
    mask: dict[str, Tensor]
    base: dict[str, Tensor]
    classifier: list[str]
    rigl: bool = False
    rigl_interval: int = 20
    rigl_drop_fraction: float = 0.3
    rigl_end: float = 0.75
    rigl_updates: int = 0

    @torch.no_grad()
    def project_(self, model: nn.Module) -> None:
        """Reset every entry outside the mask to its pretrained value (bitwise)."""
        for name, p in model.named_parameters():
            if name in self.base:
                m = self.mask[name].to(p.device)
                p.copy_(torch.where(m, p, self.base[name].to(p.device)))

    def mask_grads_(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.base and p.grad is not None:
                p.grad.mul_(self.mask[name].to(p.device, p.dtype))

    def resume(self, model: nn.Module, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.mask = {k: v.cpu() for k, v in state["mask"].items()}
            self.rigl_updates = int(state.get("rigl_updates", 0))
        self.project_(model)

    def after_backward(self, model: nn.Module, step: int) -> None:
        self.mask_grads_(model)

    def after_step(self, model: nn.Module) -> None:
        self.project_(model)

    def extra_state(self) -> dict[str, Any]:
        return {"mask": self.mask, "rigl_updates": self.rigl_updates}


def reinit_classifier(model: nn.Module, seed: int) -> None:
    """Re-initialise the last Linear layer (PyTorch's default init) from ``seed``."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        last.reset_parameters()


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _batches(images, targets: Tensor, batch_size: int, seed: int, device):
    n = len(images)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        yield images.images[index].to(device).float().div_(255.0), targets[index].to(device)


def gradient_scores(model: nn.Module, images, targets: Tensor, loss_fn, batch_size: int, num_batches: int,
                    seed: int, device, noise_sigma: float = 0.0) -> dict[str, Tensor]:
    """Sum of ``|d loss / d w|`` over ``num_batches`` training batches, per parameter entry (CPU tensors)."""
    model.to(device).train()
    _freeze_bn(model)
    scores = {n: torch.zeros_like(p, device="cpu") for n, p in model.named_parameters()}
    noise_gen = torch.Generator(device=device).manual_seed(seed * 7 + 1)
    for i, (x, t) in enumerate(_batches(images, targets, batch_size, seed, device)):
        if i >= num_batches:
            break
        if noise_sigma > 0:
            x = x + noise_sigma * torch.randn(x.shape, generator=noise_gen, device=x.device)
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), t).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                scores[n] += p.grad.detach().abs().cpu()
    model.zero_grad(set_to_none=True)
    return scores


@torch.no_grad()
def accuracy(model: nn.Module, dataset, device, batch_size: int = 256) -> float:
    """Clean accuracy of ``model`` (eval mode) on an ImageDataset."""
    model.eval()
    correct = 0
    for x, y in dataset.batches(batch_size, device=device):
        correct += int((model(x).argmax(1) == y).sum())
    return correct / max(len(dataset), 1)


class FitStep(BatchStep):
    """One batch of :func:`fit`: ``loss_fn(model(x), t)`` plus the DiffStab term, then ``zero_grad``, backward.

    Row entries: the mean loss (DiffStab included) and the mean unweighted DiffStab
    loss (0 without the term). With ``freeze_bn`` every BatchNorm is put back in eval
    mode at the start of each epoch.
    """

    columns = ("loss", "diffstab")

    def __init__(self, loss_fn: Callable[[Tensor, Tensor], Tensor], diffstab: DiffStabTerm | None = None,
                 diffstab_eps: float = 0.0, freeze_bn: bool = False):
        self.loss_fn, self.diffstab, self.diffstab_eps, self.freeze_bn = loss_fn, diffstab, diffstab_eps, freeze_bn

    def begin_epoch(self, model: nn.Module, epoch: int) -> None:
        if self.freeze_bn:
            _freeze_bn(model)

    def __call__(self, model: nn.Module, x: Tensor, t: Tensor, zero_grad: Callable[[], None], epoch: int,
                 step: int) -> dict[str, float]:
        loss = self.loss_fn(model(x), t)
        stab = 0.0
        if self.diffstab is not None:
            loss = loss + self.diffstab.term(model, x, self.diffstab_eps, None)
            stab = self.diffstab.last.item() * x.shape[0]
        zero_grad()
        loss.backward()
        return {"loss": loss.item() * x.shape[0], "diffstab": stab}


def fit(model: nn.Module, images, targets: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor], s: FitSettings,
        device, state_path: Path | None = None, run_key: str = "", desc: str = "fit",
        sparse: SparseDelta | None = None, reference: nn.Module | None = None, diffstab_weight: float = 0.0,
        diffstab_eps: float = 0.0, freeze_bn: bool = False) -> list[dict[str, Any]]:
    """Train ``model`` in place (module docstring); returns one history row per epoch.

    Rows: ``epoch, loss, diffstab, time_s``. ``images``: an ImageDataset (pixels);
    ``targets``: its targets (N or N x heads). ``reference``: the pretrained network for
    DiffStab (``diffstab_weight > 0``). With ``sparse``, ``sparse.mask`` is updated in
    place by RigL.
    """
    model.to(device)
    if reference is not None:
        reference.to(device).eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    steps_per_epoch = -(-len(images) // s.batch_size)
    hooks: list[LoopHook] = []
    if sparse is not None:
        if sparse.rigl:
            hooks.append(RigLHook(sparse, optimizer, steps_per_epoch * s.epochs))
        hooks.append(sparse)
    diffstab = DiffStabTerm(reference, diffstab_weight) if reference is not None and diffstab_weight > 0 else None
    return run_epochs(model, optimizer, FitStep(loss_fn, diffstab, diffstab_eps, freeze_bn),
                      lambda seed: _batches(images, targets, s.batch_size, seed, device),
                      LoopSettings(s.epochs, steps_per_epoch, s.seed, s.grad_clip, s.noise_sigma),
                      device, hooks, state_path, run_key, desc)


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)
