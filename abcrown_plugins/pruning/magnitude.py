"""Global magnitude pruning: a pure step ``prune(model, mask, rate) -> Mask``."""

from __future__ import annotations

import torch
from torch import nn

from abcrown_plugins.pruning.mask import Mask
from abcrown_plugins.pruning.strategies import prune_unstructured


@torch.no_grad()
def prune_global_magnitude(model: nn.Module, mask: Mask, rate: float) -> Mask:
    """Remove ``round(rate * kept)`` of the still-kept weights with the smallest |w|, globally.

    The returned mask is a subset of ``mask``; exactly that many weights are
    removed (ties broken by position), so the achieved sparsity is exact.
    """
    params = dict(model.named_parameters())
    return prune_unstructured({k: params[k].detach().abs() for k in mask}, mask, rate, "global")
