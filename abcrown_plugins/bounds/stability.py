"""Neuron (in)stability from recorded ReLU bounds.

A ReLU is unstable on a box when its pre-activation bounds straddle zero
(``l < 0 < u``). The instability of a layer is ``sum(-l * u)`` over its
unstable neurons (seed 001), averaged over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from abcrown_plugins.bounds.ibp import ReluBounds


@dataclass(frozen=True)
class Stability:
    instability: float       # mean over the batch of sum(-l*u) over unstable neurons
    unstable_ratio: float    # unstable neurons / all ReLU neurons
    unstable: int            # unstable neuron count (summed over the batch)
    total: int               # neuron count (summed over the batch)


def _measure(lowers: list[Tensor], uppers: list[Tensor]) -> Stability:
    inst, unstable, total, batch = 0.0, 0, 0, 1
    for lo, up in zip(lowers, uppers):
        mask = (lo < 0) & (up > 0)
        batch = lo.shape[0]
        inst += float((-lo * up * mask).sum())
        unstable += int(mask.sum())
        total += mask.numel()
    return Stability(inst / batch, unstable / max(total, 1), unstable, total)


def pre_activation_stability(relus: list[ReluBounds]) -> Stability:
    return _measure([r.lower for r in relus], [r.upper for r in relus])


def pre_bn_stability(relus: list[ReluBounds]) -> Stability:
    """Stability of the pre-BN bounds normalised as ``l / gamma``, ``u / gamma`` (seed 001).

    Equivalent to measuring ``l * u / gamma^2`` on the pre-activation bounds;
    ReLUs without a preceding BatchNorm are skipped.
    """
    lowers, uppers = [], []
    for r in relus:
        if r.bn is None:
            continue
        view = (1, -1) + (1,) * (r.lower.dim() - 2)
        gamma = r.bn.weight.detach().view(view)
        lowers.append(r.lower / gamma.abs().clamp_min(1e-12))
        uppers.append(r.upper / gamma.abs().clamp_min(1e-12))
    return _measure(lowers, uppers)


def merge(parts: list[Stability]) -> Stability:
    """Combine per-batch measurements weighted by batch size."""
    if not parts:
        return Stability(0.0, 0.0, 0, 0)
    unstable = sum(p.unstable for p in parts)
    total = sum(p.total for p in parts)
    # instability is a per-example mean; each part's example count is proportional to its total
    inst = sum(p.instability * p.total for p in parts) / max(total, 1)
    return Stability(inst, unstable / max(total, 1), unstable, total)
