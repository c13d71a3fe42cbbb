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
def layer_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """MACs of each ``nn.Conv2d`` / ``nn.Linear`` (by module name) in one forward pass on one ``C x H x W`` input.

    Runs one eval-mode forward pass on zeros (on the model's device) with hooks;
    the model's train/eval flags and BatchNorm statistics are left unchanged.
    Raises ValueError for a malformed shape.
    """
    if len(input_shape) != 3 or any(int(s) <= 0 for s in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    macs: dict[str, int] = {}

    def hook(m: nn.Module, inputs, out, name: str) -> None:
        if isinstance(m, nn.Conv2d):
            per_output = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            per_output = m.in_features
        macs[name] = macs.get(name, 0) + out[0].numel() * per_output

    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: hook(mod, i, o, name))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
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
    return macs


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """MACs of one forward pass of ``model`` on one ``C x H x W`` input (the sum of :func:`layer_macs`)."""
    return int(sum(layer_macs(model, input_shape).values()))
