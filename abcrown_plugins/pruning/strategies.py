"""Strategies: turn importance scores into a smaller mask, with exact counts.

Unstructured: ``global`` removes ``round(rate * kept)`` of the kept weights with the
lowest scores across all layers; ``layerwise`` removes ``round(rate * kept_layer)`` in
each layer. Channels: see :func:`abcrown_plugins.pruning.channels.prune_channels_by_score`
(the same two strategies over channel units, never emptying a layer). Ties are broken by position, so a
strategy is deterministic; the result is always a subset of the input mask.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from abcrown_plugins.errors import UserError
from abcrown_plugins.pruning.mask import Mask

STRATEGIES = {
    "global": "rank the kept weights of all prunable layers together",
    "layerwise": "remove the same fraction of the kept weights in every prunable layer",
}


def remove_lowest(scores: Tensor, keep: Tensor, n_remove: int) -> Tensor:
    """``keep`` (flat bool) minus the ``n_remove`` kept entries with the lowest score.

    The one ranking step of every pruning mechanism (weights, channel units).
    Ties go by position (stable sort). Entries scored ``+inf`` are never removed,
    so fewer than ``n_remove`` go when fewer kept entries are finite or ``-inf``.
    """
    s = torch.where(keep, scores.double(), torch.full_like(scores, float("inf"), dtype=torch.float64))
    n_remove = min(n_remove, int((s < float("inf")).sum()))
    out = keep.clone()
    if n_remove > 0:
        out[torch.argsort(s, stable=True)[:n_remove]] = False
    return out


@torch.no_grad()
def prune_unstructured(scores: Mapping[str, Tensor], mask: Mask, rate: float, strategy: str = "global") -> Mask:
    """Remove a ``rate`` fraction of the kept weights with the lowest ``scores`` (higher = keep).

    ``scores[k]`` has the shape of ``mask[k]``; NaN scores count as lowest. The achieved
    density is exact: ``kept' = kept - round(rate * kept)`` (global) or that per layer.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"pruning rate must be in [0, 1), got {rate}")
    if strategy not in STRATEGIES:
        raise UserError(f"unknown pruning strategy '{strategy}' (valid: {', '.join(STRATEGIES)})")
    names = list(mask)
    for k in names:
        if k not in scores or tuple(scores[k].shape) != tuple(mask[k].shape):
            raise ValueError(f"scores for '{k}' missing or of the wrong shape")
    flat_s = {k: torch.nan_to_num(scores[k].detach().flatten().cpu().double(), nan=-float("inf")) for k in names}
    flat_m = {k: mask[k].flatten().cpu() for k in names}
    out: dict[str, Tensor] = {}
    if strategy == "global":
        s = torch.cat([flat_s[k] for k in names])
        keep = torch.cat([flat_m[k] for k in names])
        new = remove_lowest(s, keep, int(round(rate * int(keep.sum()))))
        offset = 0
        for k in names:
            n = flat_m[k].numel()
            out[k] = new[offset:offset + n].view_as(mask[k])
            offset += n
    else:
        for k in names:
            out[k] = remove_lowest(flat_s[k], flat_m[k], int(round(rate * int(flat_m[k].sum())))).view_as(mask[k])
    return Mask(out)
