"""Stability regularisers on pre-activation bounds: RSLoss and NRSLoss (seed 001, eq. 4-5).

For a ReLU neuron with pre-activation bounds ``[l, u]``:

* RSLoss (Xiao et al. 2019):  ``-tanh(1 + l * u)``;
* NRSLoss (seed 001):         ``-tanh(1 + l * u / gamma^2)``, ``gamma`` the weight of the
  BatchNorm channel before the ReLU, with **no gradient to gamma**.

``l * u / gamma^2`` is the product of the pre-activation bounds with the BatchNorm scale
divided out, i.e. RSLoss on the pre-BN bounds normalised as ``l / gamma``, ``u / gamma``.
To stop the gradient to gamma exactly, NRSLoss computes ``l / gamma`` and ``u / gamma``
from the recorded pre-BN bounds through the BatchNorm's affine map with ``gamma``
detached (the same map the bound propagation used: batch statistics of the box centre in
train mode, running statistics in eval mode, or those auto_LiRPA recorded); gradients
reach the pre-BN bounds (so the conv weights and everything before) and the BatchNorm
bias, while gamma and the batch statistics act as constants. ReLUs without a preceding
BatchNorm get RSLoss (``gamma = 1``).

Scope of the stop-gradient (as in the seed): the NRSLoss of a neuron sends no gradient to
*its own* channel's gamma, neither through the normalisation nor through the bounds. The
pre-BN bounds of a deeper layer are computed through earlier layers, so, like every
earlier weight, an earlier BatchNorm's gamma still receives gradient from the deeper
layers' terms; detaching those too would need a separate bound pass instead of reusing
the training objective's bounds.

Both terms are the mean over every recorded neuron and example (a scalar, no unit);
the coefficient (``regularizer.stability_weight``, default 0.01) is applied by the caller
of :meth:`StabilityTerm.term`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from abcrown_plugins.bounds import IBPResult, ReluBounds, input_box, interval_propagate


class _NormalisedProductTanh(torch.autograd.Function):
    """``sum(tanh(1 + (c1*lo + c0) * (c1*hi + c0)))`` with a hand-written, fused backward.

    ``lo, hi``: pre-BN bounds (N x C x ...); ``c1`` (1 x C x 1..., constant) and ``c0``
    (same shape, gradient wanted) per channel. Saves three tensors and runs about a third
    of the elementwise passes autograd would, which keeps NRSLoss cheap next to IBP.
    """

    @staticmethod
    def forward(ctx, lo: Tensor, hi: Tensor, c1: Tensor, c0: Tensor) -> Tensor:
        a = torch.addcmul(c0, lo, c1)   # l / gamma (or u / gamma for gamma < 0)
        b = torch.addcmul(c0, hi, c1)
        t = torch.mul(a, b).add_(1).tanh_()
        ctx.save_for_backward(a, b, t, c1)
        ctx.c0_shape = c0.shape
        return t.sum()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        a, b, t, c1 = ctx.saved_tensors
        one = t.new_ones(()).expand_as(t)
        gc = torch.addcmul(one, t, t, value=-1).mul_(c1 * grad_out)  # c1 * d tanh / d p
        g_lo = gc.mul(b)                                              # dp/dlo = c1 * b
        g_hi = gc.mul_(a)                                             # dp/dhi = c1 * a
        g_c0 = None
        if ctx.needs_input_grad[3]:
            dims = [d for d, n in enumerate(ctx.c0_shape) if n == 1]
            g_c0 = (g_lo.sum(dims, keepdim=True) + g_hi.sum(dims, keepdim=True)) / c1
        return g_lo, g_hi, None, g_c0


def _nrs_sum(r: ReluBounds) -> tuple[Tensor, int]:
    """``(sum of tanh(1 + l*u/gamma^2), count)`` of one ReLU layer, gamma's gradient stopped.

    With the BatchNorm written as ``y = gamma * inv * (x - mean) + beta``:
    ``l/gamma, u/gamma = inv * x_bound + (beta/gamma - mean * inv)`` for the two pre-BN
    bounds (their roles swap when gamma < 0; the product does not change). ``gamma``,
    ``mean`` and ``inv`` enter as constants; gradients flow to the pre-BN bounds (so to
    every earlier layer) and to beta.
    """
    bn, lo, hi = r.bn, r.pre_bn_lower, r.pre_bn_upper
    view = (1, -1) + (1,) * (lo.dim() - 2)
    mean, var = getattr(r, "bn_mean", None), getattr(r, "bn_var", None)
    with torch.no_grad():
        if mean is None or var is None:
            if bn.training or bn.running_mean is None:
                dims = [0] + list(range(2, lo.dim()))
                var, mean = torch.var_mean(lo + hi, dims, unbiased=False)  # of 2 * mid
                mean, var = mean / 2, var / 4
            else:
                mean, var = bn.running_mean, bn.running_var
        inv = torch.rsqrt(var.detach() + bn.eps)
        gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(inv)
        gamma = torch.where(gamma.abs() < 1e-12, torch.full_like(gamma, 1e-12), gamma)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(inv)
    c0 = (beta / gamma - mean.detach() * inv).view(view)
    c1 = inv.view(view).to(lo.dtype)
    return _NormalisedProductTanh.apply(lo, hi, c1, c0.to(lo.dtype)), lo.numel()


def _mean_loss(relus: list[ReluBounds], normalised: bool) -> Tensor:
    if not relus:
        raise ValueError("no ReLU bounds recorded: the stability regulariser needs a network with ReLUs "
                         "and bounds recorded with record=True")
    total, count = 0.0, 0
    for r in relus:
        if normalised and r.bn is not None and r.pre_bn_lower is not None:
            s, n = _nrs_sum(r)
        else:
            s, n = torch.tanh(1 + r.lower * r.upper).sum(), r.lower.numel()
        total, count = total + s, count + n
    return -total / count


def rs_loss(relus: list[ReluBounds]) -> Tensor:
    """RSLoss ``mean(-tanh(1 + l*u))`` over recorded pre-activation bounds (scalar)."""
    return _mean_loss(relus, normalised=False)


def nrs_loss(relus: list[ReluBounds]) -> Tensor:
    """NRSLoss ``mean(-tanh(1 + l*u/gamma^2))``, no gradient to gamma (scalar)."""
    return _mean_loss(relus, normalised=True)


class StabilityTerm:
    """``weight * (RS|NRS)Loss`` as a loss term; reuses bounds the objective already computed.

    ``term(model, x, eps, bounds)``: ``bounds`` is the :class:`IBPResult` (or a list of
    :class:`ReluBounds`) of the training objective for this batch (IBP or CROWN-IBP
    training); when None (standard or adversarial training) one IBP pass over the
    clipped ``eps``-ball of ``x`` computes them.
    """

    def __init__(self, kind: str, weight: float):
        if kind not in ("rs", "nrs"):
            raise ValueError(f"unknown stability regulariser '{kind}' (valid: rs, nrs)")
        self.kind, self.weight = kind, float(weight)

    def term(self, model: nn.Module, x: Tensor, eps: float,
             bounds: IBPResult | list[ReluBounds] | None = None) -> Tensor:
        if bounds is None:
            lower, upper = input_box(x, eps)
            bounds = interval_propagate(model, lower, upper, record=True)
        relus = bounds.relus if isinstance(bounds, IBPResult) else bounds
        loss = nrs_loss(relus) if self.kind == "nrs" else rs_loss(relus)
        return self.weight * loss

    def after_backward(self, model: nn.Module) -> None:
        """Nothing to do after backward (a loss term)."""

    def __repr__(self) -> str:
        return f"StabilityTerm({self.kind!r}, weight={self.weight})"
