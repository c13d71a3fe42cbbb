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

from abcrown_plugins.bounds import IBPResult, ReluBounds, batch_stats, input_box, interval_propagate


class _NormalisedProductTanh(torch.autograd.Function):
    """``sum(tanh(1 + a * b))``, ``a, b = c1 * (mid -/+ rad) + c0``, with a hand-written, fused backward.

    ``mid, rad``: centre and radius of the pre-BN box (N x C x ...); ``c1`` (1 x C x 1...,
    positive, constant) and ``c0`` (same shape, gradient wanted) per channel. With
    ``z = c1 * mid + c0`` and ``s = c1 * rad`` the product is ``a * b = z^2 - s^2``, so the
    ends of the box are never formed; ``tanh(q) = 2 * sigmoid(2q) - 1`` (the same value,
    a faster kernel on CPU), summed as ``2 * sum(sigmoid) - n``. Saves two new tensors
    and runs about a third of the elementwise passes autograd would, which keeps
    NRSLoss cheap next to IBP.
    """

    @staticmethod
    def forward(ctx, mid: Tensor, rad: Tensor, c1: Tensor, c0: Tensor) -> Tensor:
        z = torch.addcmul(c0, mid, c1)                            # (l + u) / (2 gamma)
        s = rad * c1                                              # (u - l) / (2 |gamma|)
        # sig = sigmoid(2 + 2p), p = z^2 - s^2 = l * u / gamma^2; tanh(1 + p) = 2 sig - 1
        sig = torch.addcmul(z.new_full((), 2.0), z, z, value=2).addcmul_(s, s, value=-2).sigmoid_()
        ctx.save_for_backward(z, rad, sig, c1)  # rad is kept alive by the graph anyway; s is not saved
        ctx.c0_shape = c0.shape
        return 2 * sig.sum() - sig.numel()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, rad, sig, c1 = ctx.saved_tensors
        # dtanh(1 + p)/dp = 1 - tanh^2 = 4 sig (1 - sig); dp/dz = 2z, dp/ds = -2s; the factor 8
        # and grad_out ride on the per-channel constants
        k = 8 * grad_out
        w = torch.addcmul(sig, sig, sig, value=-1)
        g_z = w.mul(z)
        g_c0 = None
        if ctx.needs_input_grad[3]:
            dims = [d for d, n in enumerate(ctx.c0_shape) if n == 1]
            g_c0 = g_z.sum(dims, keepdim=True).mul_(k)
        g_mid = g_z.mul_(k * c1)
        g_rad = w.mul_(rad).mul_(-k * c1 * c1)
        return g_mid, g_rad, None, g_c0


def _nrs_sum(r: ReluBounds) -> tuple[Tensor, int]:
    """``(sum of tanh(1 + l*u/gamma^2), count)`` of one ReLU layer, gamma's gradient stopped.

    With the BatchNorm written as ``y = gamma * inv * (x - mean) + beta``:
    ``l/gamma, u/gamma = inv * x_bound + (beta/gamma - mean * inv)`` for the two pre-BN
    bounds (their roles swap when gamma < 0; the product does not change). ``gamma``,
    ``mean`` and ``inv`` enter as constants (the statistics the propagation recorded,
    else those the BatchNorm uses now); gradients flow to the pre-BN box (so to every
    earlier layer) and to beta.
    """
    bn, mid, rad = r.bn, r.pre_bn_mid, r.pre_bn_rad
    view = (1, -1) + (1,) * (mid.dim() - 2)
    with torch.no_grad():
        if r.bn_mean is not None and r.bn_var is not None:
            mean, var = r.bn_mean, r.bn_var
        elif bn.training or bn.running_mean is None:
            mean, var = batch_stats(mid)
        else:
            mean, var = bn.running_mean, bn.running_var
        mean, var = mean.detach(), var.detach()
        inv = torch.rsqrt(var + bn.eps)
        gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(inv)
        gamma = torch.where(gamma.abs() < 1e-12, torch.full_like(gamma, 1e-12), gamma)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(inv)
    c0 = (beta / gamma - mean * inv).view(view)
    c1 = inv.view(view).to(mid.dtype)
    return _NormalisedProductTanh.apply(mid, rad, c1, c0.to(mid.dtype)), mid.numel()


def _mean_loss(relus: list[ReluBounds], normalised: bool) -> Tensor:
    if not relus:
        raise ValueError("no ReLU bounds recorded: the stability regulariser needs a network with ReLUs "
                         "and bounds recorded with record=True")
    total, count = 0.0, 0
    for r in relus:
        if normalised and r.bn is not None and r.pre_bn_mid is not None:
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
