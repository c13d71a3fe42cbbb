"""Training objectives. Each returns the loss and what it computed on the way.

``ibp_loss`` returns its IBP result so regularisers can reuse the recorded
pre-activation bounds instead of propagating again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from abcrown_plugins.bounds import IBPResult, input_box, interval_propagate, margin_spec


def robust_logits(margin_lower: Tensor) -> Tensor:
    """Worst-case logits from margin lower bounds (N x classes-1): 0 for the label, -m_j else.

    Cross-entropy of these (against the label, which sits at index 0) upper-bounds the
    worst-case cross-entropy over the box.
    """
    return torch.cat([torch.zeros_like(margin_lower[:, :1]), -margin_lower], dim=1)


def ibp_loss(model: nn.Module, x: Tensor, y: Tensor, eps: float, num_classes: int,
             bn_stats: dict | None = None) -> tuple[Tensor, IBPResult]:
    """Cross-entropy on IBP worst-case logits over the clipped eps-ball of ``x``.

    ``bn_stats``: train-mode BatchNorm statistics to bound with (see :func:`interval_propagate`).
    """
    lower, upper = input_box(x, eps)
    res = interval_propagate(model, lower, upper, spec=margin_spec(y, num_classes), record=True, bn_stats=bn_stats)
    target = torch.zeros_like(y)
    return F.cross_entropy(robust_logits(res.lower), target), res
