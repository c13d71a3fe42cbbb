"""Global magnitude pruning: a pure step ``prune(model, mask, rate) -> Mask``."""

from __future__ import annotations

import torch
from torch import nn

from abcrown_plugins.pruning.mask import Mask


@torch.no_grad()
def prune_global_magnitude(model: nn.Module, mask: Mask, rate: float) -> Mask:
    """Remove ``round(rate * kept)`` of the still-kept weights with the smallest |w|, globally.

    The returned mask is a subset of ``mask``; exactly that many weights are
    removed (ties broken by position), so the achieved sparsity is exact.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"pruning rate must be in [0, 1), got {rate}")
    params = dict(model.named_parameters())
    names = list(mask)
    scores = torch.cat([params[k].detach().abs().flatten().cpu() for k in names])
    keep = torch.cat([mask[k].flatten().cpu() for k in names])
    n_remove = int(round(rate * int(keep.sum())))
    if n_remove == 0:
        return Mask(mask.to_dict())
    scores = torch.where(keep, scores, torch.full_like(scores, float("inf")))
    order = torch.argsort(scores, stable=True)
    new_keep = keep.clone()
    new_keep[order[:n_remove]] = False
    out, offset = {}, 0
    for k in names:
        n = mask[k].numel()
        out[k] = new_keep[offset:offset + n].view_as(mask[k])
        offset += n
    return Mask(out)
