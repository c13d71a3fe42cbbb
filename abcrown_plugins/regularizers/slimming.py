"""Network Slimming's sparsity penalty (Liu et al. 2017): L1 on BatchNorm gamma, after backward."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BatchNormL1:
    """``weight * sum |gamma|`` over every BatchNorm, applied as a gradient step.

    :meth:`after_backward` adds ``weight * sign(gamma)`` (the L1 subgradient) to
    ``gamma.grad`` of every affine BatchNorm; call it between ``backward()`` and
    ``optimizer.step()``. :meth:`term` contributes nothing to the loss value, so the
    penalty never owns the loop nor costs a second backward.
    """

    def __init__(self, weight: float):
        self.weight = float(weight)

    def term(self, model: nn.Module, x: Tensor, eps: float, bounds=None) -> Tensor:
        return torch.zeros((), device=x.device)

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        if self.weight == 0:
            return
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                if m.weight.grad is None:
                    m.weight.grad = torch.zeros_like(m.weight)
                m.weight.grad.add_(torch.sign(m.weight), alpha=self.weight)

    def penalty(self, model: nn.Module) -> float:
        """The penalty value ``weight * sum |gamma|`` (for logging)."""
        return self.weight * float(sum(m.weight.abs().sum() for m in model.modules()
                                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None))

    def __repr__(self) -> str:
        return f"BatchNormL1(weight={self.weight})"
