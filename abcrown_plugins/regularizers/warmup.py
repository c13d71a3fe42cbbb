"""Warm-up regularisers of IBP training (Shi et al. 2021, "Fast certified robust training with short warmup").

During the radius ramp two terms keep interval bounds from exploding and ReLUs from dying,
on the pre-activation boxes the IBP objective already computed (``[l, u]``, centre
``c = (l + u) / 2``, radius ``r = (u - l) / 2``) of each of the ``m`` ReLU layers:

* bound tightness: ``L_tight = 1/m sum_i relu(tau - r_0 / mean(r_i)) / tau``, with ``r_0`` the
  mean radius of the (normalised) input box: penalises a layer whose mean box radius grew
  past ``r_0 / tau``;
* ReLU balance: with ``A = {l > 0}`` (active) and ``I = {u < 0}`` (inactive),
  ``rho_mean = mean(c * 1_A) / -mean(c * 1_I)`` and ``rho_var = sum((c - mean c)^2 1_A) / sum((c - mean c)^2 1_I)``,
  ``L_relu = 1/m sum_i [relu(tau - min(rho_mean, 1/rho_mean)) + relu(tau - min(rho_var, 1/rho_var))] / tau``;
  a layer whose terms are not finite (no active or no inactive neuron) contributes 0.

The sum is weighted by ``lambda_t = lambda_0 * (1 - eps_t / eps)``: full strength when the
ramp starts, zero at the target radius, so the trained network's final objective is unchanged.
Without bounds for the batch (``eps_t = 0``) the term is 0 and sends no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from abcrown_plugins.bounds import IBPResult, ReluBounds, input_box


def input_radius(model: nn.Module, x: Tensor, eps: float) -> Tensor:
    """Mean radius of the clipped eps-box of ``x`` in the units of the network's first layer.

    A network that starts with a ``Normalize`` (the zoo's, imported ones with data.mean/std)
    sees the box divided by its std; any other sees the pixel box.
    """
    lower, upper = input_box(x, eps)
    rad = (upper - lower) / 2
    first = next(iter(model.children()), None)
    std = getattr(first, "std", None)
    if isinstance(std, Tensor) and std.numel() in (1, rad.shape[1]):
        rad = rad / std.view(1, -1, *([1] * (rad.dim() - 2)))
    return rad.mean()


def _ratio_term(ratio: Tensor, tol: float) -> Tensor:
    ratio = torch.minimum(ratio, 1 / ratio.clamp(min=1e-12))
    return F.relu(tol - ratio) / tol


def tightness_and_balance(relus: list[ReluBounds], r0: Tensor, tol: float) -> tuple[Tensor, Tensor]:
    """``(L_tight, L_relu)`` over the recorded ReLU layers (scalars, means over layers)."""
    if not relus:
        raise ValueError("no ReLU bounds recorded: the warm-up regulariser needs a network with ReLUs")
    tight = relus[0].lower.new_zeros(())
    balance = relus[0].lower.new_zeros(())
    for r in relus:
        lo, up = r.lower, r.upper
        centre, rad = (up + lo) / 2, (up - lo) / 2
        tight = tight + F.relu(tol - r0 / rad.mean().clamp(min=1e-12)) / tol
        active, inactive = (lo > 0).to(lo.dtype), (up < 0).to(lo.dtype)
        mean_ratio = (centre * active).mean() / -(centre * inactive).mean()
        dev = (centre - centre.mean()) ** 2
        var_ratio = (dev * active).sum() / (dev * inactive).sum()
        layer = _ratio_term(mean_ratio, tol) + _ratio_term(var_ratio, tol)
        if torch.isfinite(layer):
            balance = balance + layer
    return tight / len(relus), balance / len(relus)


class WarmupTerm:
    """``lambda_0 * (1 - eps_t / eps) * (L_tight + L_relu)`` as a loss term of IBP training.

    ``term(model, x, eps_t, bounds)``: ``bounds`` are the objective's IBP bounds of the batch
    at the scheduled radius ``eps_t``; ``eps`` (construction) is the target radius. The last
    values of both terms are kept in :attr:`last` for logging.
    """

    def __init__(self, weight: float, eps: float, tol: float = 0.5):
        if eps <= 0:
            raise ValueError(f"the warm-up regulariser needs a positive target radius, got {eps}")
        if not 0 < tol <= 1:
            raise ValueError(f"the warm-up tolerance tau must be in (0, 1], got {tol}")
        self.weight, self.eps, self.tol = float(weight), float(eps), float(tol)
        self.last: dict[str, float] = {}

    def term(self, model: nn.Module, x: Tensor, eps: float,
             bounds: IBPResult | list[ReluBounds] | None = None) -> Tensor:
        strength = self.weight * max(0.0, 1.0 - eps / self.eps)
        if bounds is None or strength == 0.0 or eps <= 0:
            return x.new_zeros(())
        relus = bounds.relus if isinstance(bounds, IBPResult) else bounds
        tight, balance = tightness_and_balance(relus, input_radius(model, x, eps), self.tol)
        self.last = {"tightness": float(tight.detach()), "relu_balance": float(balance.detach())}
        return strength * (tight + balance)

    def after_backward(self, model: nn.Module) -> None:
        """Nothing to do after backward (a loss term)."""

    def __repr__(self) -> str:
        return f"WarmupTerm(weight={self.weight}, eps={self.eps}, tol={self.tol})"
