"""Random networks through ONNX and the importer: equal to torch, and IBP sound by sampling.

Hypothesis draws a small directed acyclic network from the supported operations (conv with
groups/stride/dilation, BatchNorm, ReLU, max and average pooling, residual add, channel concat,
scaling by constants, flatten into Linear), exports it with torch's exporter, imports it, and
checks the import against the module and the interval bounds against sampled outputs.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from abcrown_plugins.bounds import input_box, interval_propagate
from abcrown_plugins.graph import import_onnx
from tests.conftest import assert_within, sample_box
from tests.fuzz.helpers import FUZZ
from tests.graph.nets import onnx_bytes

pytestmark = pytest.mark.filterwarnings("ignore")


class RandomNet(nn.Module):
    """Blocks drawn by hypothesis on C x 8 x 8 inputs, then flatten and two Linear layers."""

    def __init__(self, plan: list[tuple], channels: int, classes: int = 5):
        super().__init__()
        self.plan = plan
        self.layers = nn.ModuleList()
        c, size = channels, 8
        for kind, width, groups, stride in plan:
            if kind == "conv":
                g = groups if c % groups == 0 and width % groups == 0 else 1
                self.layers.append(nn.Sequential(nn.Conv2d(c, width, 3, stride, 1 + (stride == 1), dilation=1 + (stride == 1), groups=g),
                                                 nn.BatchNorm2d(width), nn.ReLU()))
                c, size = width, (size - 1) // stride + 1
            elif kind == "residual":
                self.layers.append(nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)))
            elif kind == "concat":
                self.layers.append(nn.Conv2d(c, width, 1))
                c += width
            elif kind == "pool":
                self.layers.append(nn.MaxPool2d(2) if stride == 2 else nn.AvgPool2d(2))
                size //= 2
            else:  # scale
                self.layers.append(nn.Identity())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, 12), nn.ReLU(), nn.Linear(12, classes))

    def forward(self, x):
        for (kind, *_), layer in zip(self.plan, self.layers):
            if kind == "residual":
                x = torch.relu(x + layer(x))
            elif kind == "concat":
                x = torch.cat([x, layer(x)], 1)
            elif kind == "scale":
                x = x * 0.5 - 0.1
            else:
                x = layer(x)
        return self.head(x)


block = st.tuples(st.sampled_from(["conv", "residual", "concat", "pool", "scale"]), st.integers(2, 6),
                  st.sampled_from([1, 2]), st.sampled_from([1, 2]))


@settings(FUZZ, max_examples=25)
@given(plan=st.lists(block, min_size=1, max_size=5), channels=st.integers(1, 3), seed=st.integers(0, 2 ** 16),
       eps=st.sampled_from([0.0, 0.01, 0.1]), fold=st.booleans())
def test_random_networks_import_exactly_and_bound_soundly(plan, channels, seed, eps, fold):
    # pooling twice on 8 x 8 with stride-2 convs could reach 0 x 0: keep at most two size halvings
    halvings = 0
    kept = []
    for step in plan:
        halves = step[0] == "pool" or (step[0] == "conv" and step[3] == 2)
        if halves and halvings == 2:
            continue
        halvings += halves
        kept.append(step)
    torch.manual_seed(seed)
    net = RandomNet(kept, channels).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    shape = (channels, 8, 8)
    gm = import_onnx(onnx_bytes(net, shape, fold))
    x = torch.rand(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), atol=1e-4, rtol=1e-4)
    lower, upper = input_box(x, eps)
    for model in (gm, net):  # the import and the user's module (traced by fx) alike
        box = interval_propagate(model, lower, upper)
        with torch.no_grad():
            out = model(sample_box(lower, upper, 64).flatten(0, 1)).view(64, 3, -1)
        assert_within(out, box.lower, box.upper)
