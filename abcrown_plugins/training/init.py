"""Weight initialisations."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def ibp_init(model: nn.Module) -> None:
    """IBP initialisation (Shi et al. 2021): ``w ~ N(0, 2*pi / fan_in^2)``, biases 0.

    Keeps the expected growth of interval widths per layer near 1 at initialisation,
    which makes the eps warm-up of IBP training stable.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in)
            if m.bias is not None:
                m.bias.zero_()
