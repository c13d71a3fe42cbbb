"""FGSM adversarial training with the GradAlign regulariser (Andriushchenko & Flammarion 2020).

All inputs are [0,1] pixels (N x C x H x W); ``eps`` and step sizes are in the same
units. The adversarial example stays in the eps-ball of ``x`` clipped to [0,1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _uniform_like(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    u = torch.rand(x.shape, generator=generator, device="cpu" if generator is not None else x.device)
    return ((u.to(x.device) * 2 - 1) * eps).to(x.dtype)


def fgsm_perturb(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, init: str = "random",
                 generator: torch.Generator | None = None) -> Tensor:
    """One FGSM step from ``x`` (init ``zero``) or from a uniform point of the ball (``random``).

    Returns ``x_adv`` (detached) with ``|x_adv - x| <= eps`` and ``0 <= x_adv <= 1``.
    """
    if init == "random":
        delta = _uniform_like(x, eps, generator)
    elif init == "zero":
        delta = torch.zeros_like(x)
    else:
        raise ValueError(f"unknown FGSM init '{init}' (valid: random, zero)")
    delta = ((x + delta).clamp(0, 1) - x).detach().requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


def _input_grad(model: nn.Module, x: Tensor, y: Tensor, create_graph: bool) -> Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad


def grad_align(model: nn.Module, x: Tensor, y: Tensor, eps: float,
               generator: torch.Generator | None = None) -> Tensor:
    """GradAlign: ``1 - mean_i cos(grad_x L(x_i), grad_x L(x_i + u_i))``, ``u ~ U[-eps, eps]``.

    The gradient at ``x`` is a constant (no graph); the one at the noisy point keeps its
    graph (double backpropagation), as in the reference implementation. Scalar in [0, 2].
    """
    g_clean = _input_grad(model, x, y, create_graph=False).detach()
    x_noisy = (x + _uniform_like(x, eps, generator)).clamp(0, 1)
    g_noisy = _input_grad(model, x_noisy, y, create_graph=True)
    cos = F.cosine_similarity(g_clean.flatten(1), g_noisy.flatten(1), dim=1)
    return 1.0 - cos.mean()


def fgsm_gradalign_loss(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, init: str,
                        lam: float, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``CE(f(x_fgsm), y) + lam * GradAlign``; returns ``(loss, logits at x_fgsm)``.

    ``alpha`` is the FGSM step in pixel units. At ``eps == 0`` this is clean cross-entropy.
    """
    if eps <= 0:
        logits = model(x)
        return F.cross_entropy(logits, y), logits
    x_adv = fgsm_perturb(model, x, y, eps, alpha, init, generator)
    logits = model(x_adv)
    loss = F.cross_entropy(logits, y)
    if lam > 0:
        loss = loss + lam * grad_align(model, x, y, eps, generator)
    return loss, logits
