"""Registry of regularisers by name; a bad name lists the valid ones."""

from __future__ import annotations

from typing import Callable

from abcrown_plugins.errors import UserError
from abcrown_plugins.regularizers.slimming import BatchNormL1
from abcrown_plugins.regularizers.stability import StabilityTerm
from abcrown_plugins.regularizers.warmup import WarmupTerm

REGULARIZERS: dict[str, tuple[Callable[..., object], str]] = {
    "rs": (lambda w: StabilityTerm("rs", w), "RSLoss -tanh(1 + l*u) on pre-activation bounds (Xiao et al. 2019)"),
    "nrs": (lambda w: StabilityTerm("nrs", w), "NRSLoss -tanh(1 + l*u/gamma^2), no gradient to gamma (seed 001)"),
    "bn_l1": (BatchNormL1, "L1 on BatchNorm gamma, added to the gradient after backward (Network Slimming)"),
    "warmup": (WarmupTerm, "bound tightness + ReLU balance during the IBP radius ramp (Shi et al. 2021); needs eps, tol"),
}


def make_regularizer(name: str, weight: float, **options):
    """A regulariser object with ``term(model, x, eps, bounds)`` and ``after_backward(model)``.

    ``options`` go to the regulariser's constructor (``warmup``: ``eps``, ``tol``).
    """
    if name not in REGULARIZERS:
        raise UserError(f"unknown regulariser '{name}' (valid: {', '.join(REGULARIZERS)})")
    return REGULARIZERS[name][0](weight, **options)
