"""Adapter to auto_LiRPA (optional): IBP and CROWN bounds on the same boxes.

auto_LiRPA is not on PyPI in a usable version; users install it from
upstream (see README). Everything here imports it lazily and raises a
:class:`UserError` saying how to install it when it is absent.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from abcrown_plugins.errors import UserError

INSTALL_HINT = ("auto_LiRPA is not importable; install it from upstream: git clone "
                "https://github.com/Verified-Intelligence/auto_LiRPA && pip install --no-deps -e ./auto_LiRPA")

METHODS = {"ibp": "IBP", "crown": "CROWN", "crown-ibp": "CROWN-IBP"}


def lirpa_available() -> bool:
    return importlib.util.find_spec("auto_LiRPA") is not None


class LirpaBounder:
    """Wraps ``model`` (in eval mode) in an auto_LiRPA ``BoundedModule`` once, bounds many boxes."""

    def __init__(self, model: nn.Module, example: Tensor):
        if not lirpa_available():
            raise UserError(INSTALL_HINT)
        from auto_LiRPA import BoundedModule

        model.eval()
        self.bounded = BoundedModule(model, torch.zeros_like(example[:1]), device=example.device,
                                     bound_opts={"verbosity": 0})

    def bounds(self, lower: Tensor, upper: Tensor, method: str = "crown",
               spec: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Bounds of ``f`` (or ``spec @ f``) over ``[lower, upper]``; ``method`` in :data:`METHODS`."""
        if method not in METHODS:
            raise UserError(f"unknown bound method '{method}' (valid: {', '.join(METHODS)})")
        from auto_LiRPA import BoundedTensor
        from auto_LiRPA.perturbations import PerturbationLpNorm

        ptb = PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper)
        x = BoundedTensor((lower + upper) / 2, ptb)
        lb, ub = self.bounded.compute_bounds(x=(x,), method=METHODS[method], C=spec)
        return lb.detach(), ub.detach()


def lirpa_bounds(model: nn.Module, lower: Tensor, upper: Tensor, method: str = "crown",
                 spec: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One-shot :meth:`LirpaBounder.bounds`."""
    return LirpaBounder(model, lower).bounds(lower, upper, method, spec)
