"""Registry of regularisers by name; a bad name lists the valid ones."""

from __future__ import annotations

from typing import Callable

from abcrown_plugins.errors import UserError
from abcrown_plugins.regularizers.slimming import BatchNormL1
from abcrown_plugins.regularizers.stability import StabilityTerm

REGULARIZERS: dict[str, tuple[Callable[[float], object], str]] = {
    "rs": (lambda w: StabilityTerm("rs", w), "RSLoss -tanh(1 + l*u) on pre-activation bounds (Xiao et al. 2019)"),
    "nrs": (lambda w: StabilityTerm("nrs", w), "NRSLoss -tanh(1 + l*u/gamma^2), no gradient to gamma (seed 001)"),
    "bn_l1": (BatchNormL1, "L1 on BatchNorm gamma, added to the gradient after backward (Network Slimming)"),
}


def make_regularizer(name: str, weight: float):
    """A regulariser object with ``term(model, x, eps, bounds)`` and ``after_backward(model)``."""
    if name not in REGULARIZERS:
        raise UserError(f"unknown regulariser '{name}' (valid: {', '.join(REGULARIZERS)})")
    return REGULARIZERS[name][0](weight)
