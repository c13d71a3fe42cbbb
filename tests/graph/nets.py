"""Small networks the graph tests build and export themselves (no one else's files)."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn


class ResidualNet(nn.Module):
    """Conv, BN, ReLU, grouped conv, residual add, max-pool, concat, average pool, view, Linear; normalises inside."""

    def __init__(self, channels: int = 3, classes: int = 10, size: int = 16):
        super().__init__()
        self.register_buffer("mean", torch.linspace(0.3, 0.6, channels).view(1, channels, 1, 1))
        self.c1, self.b1 = nn.Conv2d(channels, 8, 3, 1, 1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, 1, 1, groups=2, bias=False), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 4, 3, 2, 1, dilation=1), nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(12 * (size // 4) ** 2, 24)
        self.fc2 = nn.Linear(24, classes)

    def forward(self, x):
        x = (x - self.mean) / 0.25
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(h + self.b2(self.c2(h)))
        h = torch.cat([self.pool(h), torch.relu(self.b3(self.c3(h)))], 1)
        h = self.avg(h)
        return self.fc2(torch.relu(self.fc1(h.view(h.size(0), -1))))


def residual_net(channels: int = 3, classes: int = 10, seed: int = 0, size: int = 16) -> ResidualNet:
    """A ResidualNet with non-trivial BatchNorm statistics, in eval mode (``size`` x ``size`` inputs)."""
    torch.manual_seed(seed)
    net = ResidualNet(channels, classes, size)
    for bn in (net.b1, net.b2, net.b3):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def onnx_bytes(model: nn.Module, shape: tuple[int, ...], fold: bool = True) -> bytes:
    """``model`` exported by torch's exporter (BatchNorm folded into the convs when ``fold``)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, *shape),), buf, opset_version=17, dynamo=False,
                          do_constant_folding=fold, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return buf.getvalue()


FACTORY_SOURCE = """
import torch
from tests.graph.nets import ResidualNet


def net():
    return ResidualNet(3, 10, 32)
"""
