"""RigL dynamic masks (Evci et al. 2020) for sparse deltas, adapted as in seed 000, appendix A.2.

One update, inside every pool of equal-size units of one layer
(:class:`~abcrown_plugins.transfer.masks.UnitLayout`): drop the ``m`` active
units with the smallest update magnitude ``|delta|`` and grow the ``m``
previously inactive units with the largest gradient magnitude, ``m =
round(drop_fraction * active)`` (at most the number of inactive units). The
count of updated parameters is therefore exactly preserved.

Structured (channel) units are scored through their BatchNorm gamma, as in
the seed: ``|delta gamma|`` to drop, ``|d loss / d gamma|`` to grow; units
without a BatchNorm use the mean over their entries. Unstructured and group-wise
units use the mean ``|delta|`` and ``|grad|`` over their entries.

:func:`rigl_update` is a pure function: it returns the new mask. :class:`RigLHook`
runs it inside the training loop (:func:`abcrown_plugins.training.loop.run_epochs`)
as an ``after_backward`` hook, every ``rigl_interval`` steps with the drop fraction of
:func:`drop_fraction_at`: it updates the :class:`~abcrown_plugins.transfer.finetune.SparseDelta`'s
mask, zeroes Adam's moments of every entry that changed and resets the grown/dropped
deltas to zero (``weights = pretrained`` there).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from abcrown_plugins.training.loop import LoopHook
from abcrown_plugins.transfer.masks import UnitLayout

if TYPE_CHECKING:
    from abcrown_plugins.transfer.finetune import SparseDelta

__all__ = ["RigLHook", "drop_fraction_at", "rigl_update"]


def drop_fraction_at(step: int, total_steps: int, initial: float, end: float) -> float:
    """Cosine-decayed drop fraction of RigL: ``initial / 2 * (1 + cos(pi * step / T_end))``, 0 after ``T_end``."""
    t_end = end * total_steps
    if step >= t_end or t_end <= 0:
        return 0.0
    return initial / 2 * (1 + math.cos(math.pi * step / t_end))


def _unit_measure(layout: UnitLayout, values: dict[str, Tensor]) -> Tensor:
    scores = layout.unit_scores({n: v.abs() for n, v in values.items()})
    if layout.pattern == "structured" and layout.bn_gamma:
        for u, (name, c) in layout.bn_gamma.items():
            scores[u] = float(values[name].detach().reshape(-1)[c].abs())
    return scores


def rigl_update(layout: UnitLayout, mask: dict[str, Tensor], delta: dict[str, Tensor], grads: dict[str, Tensor],
                drop_fraction: float, classifier: list[str]) -> dict[str, Tensor]:
    """The mask after one RigL drop/grow step (module docstring); the input mask is not modified.

    ``delta``: current ``weights - pretrained`` per parameter; ``grads``: dense
    gradient of the training loss per parameter (same shapes).
    """
    active = layout.units_from_mask(mask)
    if drop_fraction <= 0 or layout.num_units == 0:
        return {n: v.clone() for n, v in mask.items()}
    drop_score = _unit_measure(layout, delta)
    grow_score = _unit_measure(layout, grads)
    new_active = active.clone()
    for pool in torch.unique(layout.pool).tolist():
        members = torch.nonzero(layout.pool == pool).squeeze(1)
        on = members[active[members]]
        off = members[~active[members]]
        m = min(int(round(drop_fraction * on.numel())), off.numel())
        if m == 0:
            continue
        dropped = on[torch.argsort(drop_score[on], stable=True)[:m]]
        grown = off[torch.argsort(grow_score[off], descending=True, stable=True)[:m]]
        new_active[dropped] = False
        new_active[grown] = True
    params = {n: v for n, v in mask.items()}
    return layout.mask_from_units(new_active, params, classifier)


class RigLHook(LoopHook):
    """RigL in the training loop: after the backward of every ``rigl_interval``-th step (not step 0).

    ``total_steps``: the steps of the whole run (the cosine decay's ``T``). The gradient
    RigL grows by is the full one, seen before the sparse delta masks it, so this hook
    must run before ``sparse``'s own ``after_backward``. Updates ``sparse.mask`` and
    counts ``sparse.rigl_updates`` (both saved with ``sparse``'s state).
    """

    def __init__(self, sparse: SparseDelta, optimizer: torch.optim.Optimizer, total_steps: int):
        self.sparse, self.optimizer, self.total_steps = sparse, optimizer, total_steps

    def after_backward(self, model: nn.Module, step: int) -> None:
        sp = self.sparse
        if step > 0 and step % sp.rigl_interval == 0:
            frac = drop_fraction_at(step, self.total_steps, sp.rigl_drop_fraction, sp.rigl_end)
            if frac > 0:
                self._update(model, frac)

    @torch.no_grad()
    def _update(self, model: nn.Module, frac: float) -> None:
        sp = self.sparse
        params = dict(model.named_parameters())
        delta = {n: (params[n].detach() - sp.base[n].to(params[n].device)).cpu() if n in sp.base
                 else torch.zeros(params[n].shape) for n in sp.layout.unit_of}
        grads = {n: (params[n].grad.detach().cpu() if params[n].grad is not None else torch.zeros_like(delta[n]))
                 for n in sp.layout.unit_of}
        new = rigl_update(sp.layout, sp.mask, delta, grads, frac, sp.classifier)
        changed = {n: new[n] ^ sp.mask[n] for n in sp.base}
        sp.mask = new
        sp.rigl_updates += 1
        _reset_adam_moments(self.optimizer, params, changed)
        sp.project_(model)  # dropped entries go back to the pretrained values (delta 0)


def _reset_adam_moments(optimizer: torch.optim.Optimizer, params: dict[str, nn.Parameter],
                        changed: dict[str, Tensor]) -> None:
    for name, ch in changed.items():
        state = optimizer.state.get(params[name])
        if not state or not ch.any():
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][ch.to(state[key].device)] = 0
