"""Stability regularisers on pre-activation bounds: RSLoss and NRSLoss (seed 001, eq. 4-5).

For a ReLU neuron with pre-activation bounds ``[l, u]``:

* RSLoss (Xiao et al. 2019):  ``-tanh(1 + l * u)``;
* NRSLoss (seed 001):         ``-tanh(1 + l * u / gamma^2)``, ``gamma`` the weight of the
  BatchNorm channel before the ReLU, with **no gradient to gamma**.

``l * u / gamma^2`` is the product of the pre-activation bounds with the BatchNorm scale
divided out, i.e. RSLoss on the pre-BN bounds normalised as ``l / gamma``, ``u / gamma``.
To stop the gradient to gamma exactly, NRSLoss rebuilds ``l, u`` from the recorded
pre-BN bounds through the BatchNorm's affine map with ``gamma`` detached (the same map
the bound propagation used: batch statistics of the box centre in train mode, running
statistics in eval mode); gradients still reach the conv weights, the BatchNorm bias and
everything before. ReLUs without a preceding BatchNorm get RSLoss (``gamma = 1``).

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


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm, pre_lower: Tensor, pre_upper: Tensor,
                    detach_gamma: bool, mean: Tensor | None = None, var: Tensor | None = None
                    ) -> tuple[Tensor, Tensor]:
    """Per-channel ``scale, shift`` of ``bn`` as the bound computation applied it to this box.

    ``mean``/``var``: the statistics the bound used, when known (auto_LiRPA records them);
    else those of the built-in IBP rule (the box centre's batch in train mode).
    """
    mid = (pre_lower + pre_upper) / 2
    if mean is not None and var is not None:
        pass
    elif bn.training or bn.running_mean is None:
        dims = [0] + list(range(2, mid.dim()))
        mean, var = mid.mean(dims), mid.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    inv = torch.rsqrt(var + bn.eps)
    gamma = bn.weight
    if gamma is not None and detach_gamma:
        gamma = gamma.detach()
    scale = gamma * inv if gamma is not None else inv
    shift = (bn.bias if bn.bias is not None else 0) - mean * scale
    return scale, shift


def _product(r: ReluBounds, normalised: bool) -> Tensor:
    """``l * u`` (RS) or ``l * u / gamma^2`` with gamma's gradient stopped (NRS), per neuron."""
    if not normalised or r.bn is None or r.pre_bn_lower is None:
        return r.lower * r.upper
    scale, shift = _bn_scale_shift(r.bn, r.pre_bn_lower, r.pre_bn_upper, True,
                                   getattr(r, "bn_mean", None), getattr(r, "bn_var", None))
    view = (1, -1) + (1,) * (r.pre_bn_lower.dim() - 2)
    s, b = scale.view(view), shift.view(view)
    mid = (r.pre_bn_lower + r.pre_bn_upper) / 2 * s + b
    rad = (r.pre_bn_upper - r.pre_bn_lower) / 2 * s.abs()
    lower, upper = mid - rad, mid + rad
    gamma2 = r.bn.weight.detach().view(view).square().clamp_min(1e-12)
    return lower * upper / gamma2


def _mean_loss(relus: list[ReluBounds], normalised: bool) -> Tensor:
    if not relus:
        raise ValueError("no ReLU bounds recorded: the stability regulariser needs a network with ReLUs "
                         "and bounds recorded with record=True")
    terms = [-torch.tanh(1 + _product(r, normalised)).flatten(1) for r in relus]
    return torch.cat(terms, dim=1).mean()


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
