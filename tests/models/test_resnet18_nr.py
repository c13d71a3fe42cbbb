"""resnet18_nr: α,β-CROWN's narrow ResNet-18 at double width (seed 001, App. B.3)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import model_zoo
from abcrown_plugins.bounds import interval_propagate
from model_zoo.layers import BasicBlock
from tests.conftest import assert_within, randomize_batchnorm, sample_box


def build(channels: int = 3, size: int = 32) -> nn.Module:
    return model_zoo.build_model("resnet18_nr", in_channels=channels, input_size=size)


def test_structure_matches_narrow_resnet18_at_double_width():
    m = build()
    blocks = [l for l in m if isinstance(l, BasicBlock)]
    # 4 stages x 2 blocks; widths 4, 8, 16, 32 (alpha-beta-CROWN's in_planes=2 doubled); stride 2 opens stages 2-4
    assert [(b.conv1.in_channels, b.conv1.out_channels, b.conv1.stride[0]) for b in blocks] == [
        (4, 4, 1), (4, 4, 1), (4, 8, 2), (8, 8, 1), (8, 16, 2), (16, 16, 1), (16, 32, 2), (32, 32, 1)]
    assert [len(b.shortcut) for b in blocks] == [0, 0, 2, 0, 2, 0, 2, 0]  # 1x1 conv + BN where shape changes
    stem = m[1]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.bias) == (3, 4, (3, 3), None)
    assert isinstance(m[2], nn.BatchNorm2d) and isinstance(m[3], nn.ReLU)
    assert all(c.bias is None for c in m.modules() if isinstance(c, nn.Conv2d))
    pool, flat, fc = list(m)[-3:]
    assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 4 and isinstance(flat, nn.Flatten)
    assert (fc.in_features, fc.out_features) == (32, 10)
    assert model_zoo.count_parameters(m) == 44_622


@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_feature_map_sizes(channels, size):
    m = build(channels, size).eval()
    shapes = []
    hooks = [b.register_forward_hook(lambda mod, i, o: shapes.append(tuple(o.shape[1:])))
             for b in m if isinstance(b, BasicBlock)]
    m(torch.rand(2, channels, size, size))
    for h in hooks:
        h.remove()
    stages = {32: [32, 16, 8, 4], 28: [28, 14, 7, 4]}[size]  # 3x3 stride-2 pad-1 convs: ceil(s / 2)
    assert shapes == [(4 * 2 ** (i // 2), stages[i // 2], stages[i // 2]) for i in range(8)]
    assert m(torch.rand(2, channels, size, size)).shape == (2, 10)


def test_ibp_sound_by_sampling():
    m = build()
    randomize_batchnorm(m)
    m.eval()
    x = torch.rand(2, 3, 32, 32)
    lo, hi = (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1)
    with torch.no_grad():
        res = interval_propagate(m, lo, hi)
        for i in range(2):
            pts = sample_box(lo[i], hi[i], 64)
            assert_within(m(pts), res.lower[i], res.upper[i])


_ABCROWN_SIDE = """
import sys, torch
from model_defs import ResNet18
torch.manual_seed(0)
m = ResNet18(in_planes=4)
with torch.no_grad():
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5); mod.running_var.uniform_(0.5, 2.0)
            mod.weight.uniform_(-1.5, 1.5); mod.bias.uniform_(-0.5, 0.5)
m.eval()
x = torch.rand(4, 3, 32, 32)
sd = m.state_dict()
torch.save({"keys": list(sd), "values": [v.clone() for v in sd.values()], "x": x, "y": m(x).detach()}, sys.argv[1])
"""


@pytest.mark.external
def test_equals_alpha_beta_crown_resnet18_in_planes_4(tmp_path):
    """Same weights in the same order give the same logits as α,β-CROWN's ``ResNet18(in_planes=4)``."""
    home, python = os.environ.get("ABCROWN_HOME"), os.environ.get("ABCROWN_PYTHON")
    if not home or not python or not (Path(home) / "complete_verifier" / "model_defs.py").is_file():
        pytest.skip("set ABCROWN_HOME (an alpha-beta-CROWN checkout) and ABCROWN_PYTHON to compare")
    out = tmp_path / "ref.pt"
    subprocess.run([python, "-c", _ABCROWN_SIDE, str(out)], cwd=Path(home) / "complete_verifier", check=True,
                   capture_output=True, timeout=300)
    ref = torch.load(out, weights_only=True)
    m = build()
    ours = [k for k in m.state_dict() if k not in ("0.mean", "0.std")]  # identity normalisation here
    assert len(ours) == len(ref["keys"])
    state = dict(m.state_dict())
    for k, theirs, v in zip(ours, ref["keys"], ref["values"]):
        assert state[k].shape == v.shape, (k, theirs)
        assert k.rsplit(".", 1)[-1] == theirs.rsplit(".", 1)[-1], (k, theirs)
        state[k] = v
    m.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(m.eval()(ref["x"]), ref["y"], atol=1e-5, rtol=1e-5)
