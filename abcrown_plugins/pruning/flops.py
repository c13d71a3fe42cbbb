"""Multiply-accumulate (MAC) counts of one forward pass, for FLOP ratios of pruned models.

Counted layers (bias additions, BatchNorm, activations and pooling are not):

* ``nn.Conv2d``: ``C_out * H_out * W_out * (C_in / groups) * kH * kW``;
* ``nn.Linear``: ``in_features * out_features`` per input row.

Zeroed (masked) weights still count: the figure measures the dense work of the
model as built, so a physically compacted model (``compaction.compact``) has
fewer MACs while a masked one has as many as the dense one.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """MACs of one forward pass of ``model`` on one ``C x H x W`` input.

    Runs one eval-mode forward pass on zeros (on the model's device) with hooks;
    the model's train/eval flags and BatchNorm statistics are left unchanged.
    Raises ValueError for a malformed shape.
    """
    if len(input_shape) != 3 or any(int(s) <= 0 for s in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    total = 0

    def conv_hook(m: nn.Conv2d, inputs, out) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        total += out[0].numel() * (m.in_channels // m.groups) * k

    def linear_hook(m: nn.Linear, inputs, out) -> None:
        nonlocal total
        total += (out[0].numel() // m.out_features) * m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    modes = {m: m.training for m in model.modules()}
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    try:
        model.eval()
        model(torch.zeros(1, *(int(s) for s in input_shape), device=device, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
        for m, t in modes.items():
            m.training = t
    return int(total)
