"""DiffStab (seed 000, eq. 1-2): keep the downstream network's IBP bounds close to the pretrained one's.

``loss_stab = 1/N * sum_i (lb'_i - lb_i)^2 + (ub'_i - ub_i)^2`` over every
neuron ``i``: the pre-activation bounds of each ReLU, computed by the project's
IBP for the same inputs and the same L-inf ball (radius ``eps``, clipped to
[0,1]) through the pretrained network (``lb, ub``, no gradient) and the
network being fine-tuned (``lb', ub'``). ``N`` is the number of neurons per
example; the mean is also taken over the batch. The total loss is
``loss_orig + weight * loss_stab`` (eq. 2 has weight 1).

A loss term, not a loop: ``diffstab_loss(model, reference, x, eps) -> Tensor``, and
:class:`DiffStabTerm`, the same as a term of the regularisers' protocol
(``term(model, x, eps, bounds) -> weight * loss_stab``) holding the reference network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from abcrown_plugins.bounds import input_box, interval_propagate

__all__ = ["DiffStabTerm", "diffstab_loss"]


def diffstab_loss(model: nn.Module, reference: nn.Module, x: Tensor, eps: float) -> Tensor:
    """Mean squared distance between the ReLU input bounds of ``model`` and ``reference`` (scalar Tensor).

    Both networks must share the architecture up to the classifier (the
    classifiers may differ: output bounds are not compared). Exactly 0 when
    the two compute the same bounds; differentiable in ``model``'s parameters.
    """
    lower, upper = input_box(x, eps)
    with torch.no_grad():
        ref = interval_propagate(reference, lower, upper, record=True).relus
    cur = interval_propagate(model, lower, upper, record=True).relus
    if len(ref) != len(cur) or any(a.name != b.name or a.lower.shape != b.lower.shape for a, b in zip(ref, cur)):
        raise ValueError("DiffStab needs two networks with the same ReLU layers "
                         f"({[r.name for r in cur]} vs {[r.name for r in ref]})")
    total = x.new_zeros(())
    neurons = 0
    for a, b in zip(cur, ref):
        total = total + ((a.lower - b.lower) ** 2 + (a.upper - b.upper) ** 2).sum()
        neurons += a.lower[0].numel()
    return total / max(neurons * x.shape[0], 1)


class DiffStabTerm:
    """``weight * diffstab_loss(model, reference, x, eps)`` as a loss term.

    The protocol of :class:`abcrown_plugins.regularizers.StabilityTerm`, so it never owns
    a loop. ``term(model, x, eps, bounds)`` ignores ``bounds``: the distance needs the
    bounds of both networks over the same box, so it propagates them itself. ``last``
    holds the unweighted ``loss_stab`` of the latest call (detached, for logging);
    ``reference`` is used as it is (the caller puts it on the device and in eval mode).
    """

    def __init__(self, reference: nn.Module, weight: float):
        self.reference, self.weight = reference, float(weight)
        self.last: Tensor | None = None

    def term(self, model: nn.Module, x: Tensor, eps: float, bounds=None) -> Tensor:
        stab = diffstab_loss(model, self.reference, x, eps)
        self.last = stab.detach()
        return self.weight * stab

    def after_backward(self, model: nn.Module) -> None:
        """Nothing to do after backward (a loss term)."""

    def __repr__(self) -> str:
        return f"DiffStabTerm(weight={self.weight})"
