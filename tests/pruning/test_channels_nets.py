"""Networks beyond the zoo for channel coupling (tests and tools/bench_channels.py): no test functions here.

Concatenations, grouped and depthwise convs, user code in α,β-CROWN's style, and the
helpers that turn a network into an ``fx.GraphModule`` or an imported ONNX graph.
"""

from __future__ import annotations

import io
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn

from model_zoo.layers import Normalize


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, bias: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias), nn.BatchNorm2d(cout), nn.ReLU()]


class CatNet(nn.Module):
    """Concatenations, a grouped conv, a depthwise conv, max pooling, a residual add, cat -> flatten -> Linear.

    Prunable groups: ``a.0``; ``b.0``; ``c.0, dw.0, r.0`` (the depthwise conv and the residual
    conv share ``c.0``'s channels). ``stem.0`` feeds the grouped ``g.0`` and ``g.0`` is grouped:
    neither is prunable. Input 3 x 16 x 16.
    """

    input_shape = (3, 16, 16)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.norm = Normalize((0.5,) * 3, (0.25,) * 3)
        self.stem = nn.Sequential(*_cbr(3, 8))
        self.g = nn.Sequential(*_cbr(8, 8, groups=2))
        self.a = nn.Sequential(*_cbr(8, 6))
        self.b = nn.Sequential(*_cbr(8, 10, k=1, bias=False))
        self.pool = nn.MaxPool2d(2)
        self.c = nn.Sequential(*_cbr(16, 12))
        self.dw = nn.Sequential(*_cbr(12, 12, groups=12, bias=False))
        self.r = nn.Sequential(nn.Conv2d(12, 12, 1), nn.BatchNorm2d(12))
        self.head = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(28 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.g(self.stem(self.norm(x)))
        y = self.pool(torch.cat([self.a(x), self.b(x)], dim=1))   # 16 x 8 x 8
        z = self.dw(self.c(y))
        z = F.relu(z + self.r(z))                                 # 12 x 8 x 8
        h = self.head(torch.cat([z, y], 1))                       # 28 x 2 x 2
        return self.fc(torch.flatten(h, 1))


class Flatten(nn.Module):
    """α,β-CROWN's model_defs flatten."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


def abcrown_cnn(num_classes: int = 10) -> nn.Sequential:
    """α,β-CROWN's ``cnn_4layer`` layout with BatchNorm: Sequential, ``x.view(x.size(0), -1)``. 3 x 32 x 32."""
    m = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.Conv2d(16, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                      Flatten(), nn.Linear(32 * 8 * 8, 100), nn.ReLU(), nn.Linear(100, num_classes))
    m.input_shape = (3, 32, 32)
    return m


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """α,β-CROWN's CIFAR ResNet style (``resnet2b``): functional ReLU, ``+=``, ``F.avg_pool2d``, view. 3 x 32 x 32."""

    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(_Block(8, 8), _Block(8, 16, 2))
        self.layer2 = nn.Sequential(_Block(16, 16, 2))
        self.linear = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.avg_pool2d(out, 2)
        return self.linear(out.view(out.size(0), -1))


class _LeafNormalize(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Normalize) or super().is_leaf_module(m, qualname)


def fx_traced(model: nn.Module) -> fx.GraphModule:
    """``model`` as an fx GraphModule (the zoo's Normalize a leaf), same module names, ``input_shape`` kept."""
    gm = fx.GraphModule(model, _LeafNormalize().trace(model), class_name=type(model).__name__ + "FX")
    if getattr(model, "input_shape", None) is not None:
        gm.input_shape = tuple(model.input_shape)
    return gm


def onnx_graph(model: nn.Module, shape: tuple[int, ...]) -> fx.GraphModule:
    """``model`` exported to ONNX with its BatchNorms kept (not folded into the convs) and imported back."""
    from abcrown_plugins.graph import import_onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(1, *shape),), buf, opset_version=13, dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    gm = import_onnx(buf.getvalue())
    gm.input_shape = tuple(shape)
    return gm
