"""Training loops of the transfer scenario: multi-head pretraining and sparse-delta fine-tuning.

:func:`fit` trains a model on ``(images, targets)`` with any ``loss_fn``,
Gaussian augmentation (``noise_sigma``, for randomized smoothing), gradient
clipping and Adam; it is resumable per epoch (model, optimizer, mask and
history written atomically to ``state_path``; data order and noise depend only
on ``(seed, epoch)``).

With a :class:`SparseDelta` it fine-tunes ``weights = pretrained + delta``:
after every backward pass the gradient outside the mask is zeroed, and after
every step the entries outside the mask are reset to the pretrained values,
so they equal the pretrained weights *bit for bit* (the differential verifier
relies on it). BatchNorm layers stay in eval mode (running statistics frozen
at the pretrained ones) whenever ``freeze_bn`` is set, which every transfer run
does. RigL (:mod:`.rigl`) updates the mask every ``rigl_interval`` steps and
DiffStab (:mod:`.diffstab`) is added to the loss, each when enabled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from abcrown_plugins import checkpoints
from abcrown_plugins.runtime import progress
from abcrown_plugins.training.trainer import resume_state
from abcrown_plugins.transfer.diffstab import diffstab_loss
from abcrown_plugins.transfer.masks import UnitLayout
from abcrown_plugins.transfer.rigl import drop_fraction_at, rigl_update

__all__ = ["FitSettings", "SparseDelta", "accuracy", "fit", "gradient_scores", "reinit_classifier"]


@dataclass(frozen=True)
class FitSettings:
    """epochs, Adam ``lr``, ``batch_size``, ``seed`` (data order, noise), ``noise_sigma`` in [0,1] pixels."""

    epochs: int
    lr: float
    batch_size: int
    seed: int
    noise_sigma: float = 0.0
    grad_clip: float = 8.0


@dataclass
class SparseDelta:
    """A sparse delta over pretrained weights: mask, the pretrained values, and RigL settings.

    ``base`` holds the pretrained value of every masked parameter (all but the
    classifier); ``mask`` every parameter (classifier entries True).
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


def _reset_optimizer_entries(optimizer: torch.optim.Optimizer, model: nn.Module, changed: dict[str, Tensor]):
    params = dict(model.named_parameters())
    for name, ch in changed.items():
        state = optimizer.state.get(params[name])
        if not state or not ch.any():
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][ch.to(state[key].device)] = 0


def fit(model: nn.Module, images, targets: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor], s: FitSettings,
        device, state_path: Path | None = None, run_key: str = "", desc: str = "fit",
        sparse: SparseDelta | None = None, reference: nn.Module | None = None, diffstab_weight: float = 0.0,
        diffstab_eps: float = 0.0, freeze_bn: bool = False) -> list[dict[str, Any]]:
    """Train ``model`` in place (module docstring); returns one history row per epoch.

    ``images``: an ImageDataset (pixels); ``targets``: its targets (N or N x heads).
    ``reference``: the pretrained network for DiffStab (``diffstab_weight > 0``).
    With ``sparse``, ``sparse.mask`` is updated in place by RigL.
    """
    model.to(device)
    if reference is not None:
        reference.to(device).eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    history, start_epoch, state = resume_state(state_path, run_key, model, optimizer, device)
    if state is not None and sparse is not None:
        sparse.mask = {k: v.cpu() for k, v in state["mask"].items()}
        sparse.rigl_updates = int(state.get("rigl_updates", 0))
    if sparse is not None:
        sparse.project_(model)
    steps_per_epoch = -(-len(images) // s.batch_size)
    total_steps = steps_per_epoch * s.epochs
    for epoch in range(start_epoch, s.epochs):
        model.train()
        if freeze_bn:
            _freeze_bn(model)
        t0 = time.perf_counter()
        tot_loss = tot_stab = 0.0
        n_seen = 0
        noise_gen = torch.Generator(device=device).manual_seed(s.seed * 100003 + epoch)
        bar = progress(_batches(images, targets, s.batch_size, s.seed * 100003 + epoch, device),
                       desc=f"{desc} epoch {epoch + 1}/{s.epochs}", total=steps_per_epoch)
        for step, (x, t) in enumerate(bar):
            if s.noise_sigma > 0:
                x = x + s.noise_sigma * torch.randn(x.shape, generator=noise_gen, device=x.device)
            loss = loss_fn(model(x), t)
            if reference is not None and diffstab_weight > 0:
                stab = diffstab_loss(model, reference, x, diffstab_eps)
                loss = loss + diffstab_weight * stab
                tot_stab += stab.item() * x.shape[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            global_step = epoch * steps_per_epoch + step
            if sparse is not None:
                if sparse.rigl and global_step > 0 and global_step % sparse.rigl_interval == 0:
                    frac = drop_fraction_at(global_step, total_steps, sparse.rigl_drop_fraction, sparse.rigl_end)
                    if frac > 0:
                        _rigl_step(model, optimizer, sparse, frac)
                sparse.mask_grads_(model)
            if s.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            optimizer.step()
            if sparse is not None:
                sparse.project_(model)
            tot_loss += loss.item() * x.shape[0]
            n_seen += x.shape[0]
        row = {"epoch": epoch + 1, "loss": tot_loss / max(n_seen, 1), "diffstab": tot_stab / max(n_seen, 1),
               "time_s": time.perf_counter() - t0}
        history.append(row)
        if state_path is not None:
            payload = {"run_key": run_key, "epoch": epoch + 1, "model": model.state_dict(),
                       "optimizer": optimizer.state_dict(), "history": history}
            if sparse is not None:
                payload["mask"] = sparse.mask
                payload["rigl_updates"] = sparse.rigl_updates
            checkpoints.save(state_path, payload)
    return history


@torch.no_grad()
def _rigl_step(model: nn.Module, optimizer, sparse: SparseDelta, frac: float) -> None:
    params = dict(model.named_parameters())
    delta = {n: (params[n].detach() - sparse.base[n].to(params[n].device)).cpu() if n in sparse.base
             else torch.zeros(params[n].shape) for n in sparse.layout.unit_of}
    grads = {n: (params[n].grad.detach().cpu() if params[n].grad is not None else torch.zeros_like(delta[n]))
             for n in sparse.layout.unit_of}
    new = rigl_update(sparse.layout, sparse.mask, delta, grads, frac, sparse.classifier)
    changed = {n: new[n] ^ sparse.mask[n] for n in sparse.base}
    sparse.mask = new
    sparse.rigl_updates += 1
    _reset_optimizer_entries(optimizer, model, changed)
    sparse.project_(model)  # dropped entries go back to the pretrained values (delta 0)


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)
