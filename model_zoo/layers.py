"""Building blocks of the zoo's models.

Every model takes pixels in [0,1] (N x C x H x W) and starts with
:class:`Normalize`, so exported graphs and verifiers see the same input space
as the data. Blocks are plain ``nn.Module``s whose structure the bound
propagators in ``abcrown_plugins.bounds`` know.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers (saved, exported).

    Traced (auto_LiRPA, so α,β-CROWN, and ONNX export) the layer is a 1x1 convolution with
    the diagonal weight ``diag(1 / std)`` and bias ``-mean / std`` (non-persistent buffers
    derived from mean and std): the same map (the off-diagonal zeros add exact zeros), whose
    constants the verifier then treats as convolution weights. Eager PyTorch runs the
    elementwise form (a 3-channel 1x1 convolution is far slower on CPU). With elementwise
    buffer operands auto_LiRPA 0.7.1's patches mode fails on intermediate bounds once many
    neurons are unstable (a shape error in ``backward_concretize``); a grouped (depthwise)
    convolution gives unsound bounds there, hence the plain one.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("scale", torch.empty(0), persistent=False)
        self.register_buffer("shift", torch.empty(0), persistent=False)
        self._sync()
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync())

    @torch.no_grad()
    def _sync(self) -> None:
        """Recompute the convolution form from mean and std."""
        self.scale = torch.diag((1.0 / self.std).reshape(-1))[:, :, None, None]
        self.shift = (-self.mean / self.std).reshape(-1)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .double(), ...: derive the convolution form again in the new dtype/device
        out = super()._apply(fn, *args, **kwargs)
        self._sync()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # graphs for auto_LiRPA (α,β-CROWN) and ONNX: the convolution form
            return F.conv2d(x, self.scale, self.shift)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def conv_block(cin: int, cout: int, kernel: int, stride: int, padding: int = 1) -> list[nn.Module]:
    """ConvBlock(in, out, k, s) of seed 001 Table 1: Conv, BatchNorm, ReLU."""
    return [nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout), nn.ReLU()]


class BasicBlock(nn.Module):
    """Residual block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    ``shortcut`` is identity, or Conv1x1 + BatchNorm when shape changes.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Sequential()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))
