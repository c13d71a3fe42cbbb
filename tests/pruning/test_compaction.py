"""Physical compaction equals masking (logits, IBP bounds, ONNX) and MAC counts."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import model_zoo
from abcrown_plugins.bounds import input_box, interval_propagate, margin_spec
from abcrown_plugins.pruning.channels import (channel_to_weight_mask, ones_channel_mask, prunable_channels,
                                              random_channel_mask)
from abcrown_plugins.pruning.compaction import compact, compacted_widths, load_compacted
from abcrown_plugins.pruning.flops import count_macs
from model_zoo.layers import BasicBlock
from tests.conftest import randomize_batchnorm

CASES = [("cnn_7layer", 3, 32), ("resnet_small", 3, 32), ("resnet18_nr", 3, 32), ("resnet18_nr", 1, 28),
         ("cnn_small", 1, 28)]


def setup(name: str, channels: int, size: int, seed: int = 0, keep: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    m = model_zoo.build_model(name, in_channels=channels, input_size=size, mean=(0.4,) * channels,
                              std=(0.25,) * channels)
    randomize_batchnorm(m, g)
    m.eval()
    cmask = random_channel_mask(m, keep, g)
    masked = copy.deepcopy(m)
    channel_to_weight_mask(masked, cmask).apply_(masked)
    return m, masked, cmask


def expected_parameters(model: nn.Module, cmask) -> int:
    """Parameter count of the compacted model, layer by layer from the kept channel counts."""
    width = {k: int(v.sum()) for k, v in cmask.items()}
    total, cin = 0, None  # cin: kept input channels of the current tensor (None = unpruned network input)

    def conv(name: str, c: nn.Conv2d, cin_now: int) -> int:
        out = width.get(name, c.out_channels)
        return out * cin_now * c.kernel_size[0] * c.kernel_size[1] + (out if c.bias is not None else 0)

    layers = list(model.named_children())
    for name, layer in layers:
        if isinstance(layer, nn.Conv2d):
            total += conv(name, layer, cin if cin is not None else layer.in_channels)
            cin = width[name]
        elif isinstance(layer, nn.BatchNorm2d):
            total += 2 * cin
        elif isinstance(layer, BasicBlock):
            mid, out = width[f"{name}.conv1"], width[f"{name}.conv2"]
            total += conv(f"{name}.conv1", layer.conv1, cin) + 2 * mid
            total += conv(f"{name}.conv2", layer.conv2, mid) + 2 * out
            if len(layer.shortcut):
                total += conv(f"{name}.shortcut.0", layer.shortcut[0], cin) + 2 * out
            cin = out
        elif isinstance(layer, nn.Linear):
            in_features = layer.in_features
            if cin is not None:  # the Linear after Flatten: hw features per channel
                last_conv = [c for c in model.modules() if isinstance(c, nn.Conv2d)][-1]
                in_features = cin * (layer.in_features // last_conv.out_channels)
                cin = None
            total += in_features * layer.out_features + layer.out_features
    return total


@pytest.mark.parametrize("name,channels,size", CASES)
def test_compaction_equals_masking(name, channels, size):
    m, masked, cmask = setup(name, channels, size)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    small = compact(m, cmask)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # the input model is untouched
    assert not small.training
    x = torch.rand(8, channels, size, size)
    with torch.no_grad():
        diff = (small(x) - masked(x)).abs().max().item()
        scale = masked(x).abs().max().item()
    assert diff <= 1e-5 * max(1.0, scale), diff
    # same module types and names, pruned widths
    assert [(n, type(l)) for n, l in small.named_modules()] == [(n, type(l)) for n, l in m.named_modules()]
    convs = dict(small.named_modules())
    for k, keep in cmask.items():
        assert convs[k].weight.shape[0] == convs[k].out_channels == int(keep.sum())
    assert compacted_widths(m, cmask) == {k: int(v.sum()) for k, v in cmask.items()}
    # fewer parameters, by exactly the expected count
    n_small = model_zoo.count_parameters(small)
    assert n_small == expected_parameters(m, cmask) < model_zoo.count_parameters(m)


def test_expected_parameter_formula_matches_dense_models():
    for name, channels, size in CASES:
        m = model_zoo.build_model(name, in_channels=channels, input_size=size)
        assert expected_parameters(m, ones_channel_mask(m)) == model_zoo.count_parameters(m), name


@pytest.mark.parametrize("name", ["cnn_7layer", "resnet18_nr"])
def test_full_mask_is_identity_and_masking_is_ignored(name):
    m, masked, cmask = setup(name, 3, 32, seed=1)
    full = compact(m, ones_channel_mask(m))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(full(x), m(x))
        # compacting the masked or the unmasked model gives the same network
        assert torch.allclose(compact(masked, cmask)(x), compact(m, cmask)(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,channels,size", CASES[:3])
def test_ibp_bounds_of_compacted_equal_masked(name, channels, size):
    m, masked, cmask = setup(name, channels, size, seed=2)
    small = compact(m, cmask)
    x, y = torch.rand(3, channels, size, size), torch.tensor([0, 3, 7])
    lo, hi = input_box(x, 2 / 255)
    spec = margin_spec(y, 10)
    for s in (None, spec):
        with torch.no_grad():
            a = interval_propagate(masked, lo, hi, spec=s, record=False)
            b = interval_propagate(small, lo, hi, spec=s, record=False)
        for u, v in ((a.lower, b.lower), (a.upper, b.upper)):
            assert torch.allclose(u, v, rtol=1e-5, atol=1e-5 * float(u.abs().max())), (u - v).abs().max()


@pytest.mark.parametrize("name", ["cnn_7layer", "resnet18_nr"])
def test_onnx_export_of_compacted_model(name):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    m, _, cmask = setup(name, 3, 32, seed=3)
    small = compact(m, cmask)
    x = torch.rand(2, 3, 32, 32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(small, (x,), buf, opset_version=13, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = small(x).numpy()
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("name", ["cnn_7layer", "resnet18_nr"])
def test_state_dict_round_trip(name, tmp_path):
    m, masked, cmask = setup(name, 3, 32, seed=4)
    small = compact(m, cmask)
    state = small.state_dict()
    assert set(state) == set(m.state_dict())  # plain keys, no weight_orig / weight_mask
    torch.save({"state": state, "cmask": cmask}, tmp_path / "c.pt")
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    fresh = model_zoo.build_model(name, in_channels=3, input_size=32)  # other random weights
    loaded = load_compacted(fresh, payload["cmask"], payload["state"])
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
    # a state compacted with another mask does not load silently
    other = random_channel_mask(fresh, 0.25, torch.Generator().manual_seed(9))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_compacted(fresh, other, payload["state"])


def test_compaction_rejects_a_bad_mask():
    m = model_zoo.build_model("resnet_small")
    cmask = ones_channel_mask(m)
    cmask["4.shortcut.0"] = torch.arange(16) < 8  # differs from its coupled 4.conv2
    with pytest.raises(ValueError, match="'4.shortcut.0' differs from '4.conv2'"):
        compact(m, cmask)


def test_count_macs_cnn_7layer_by_hand():
    m = model_zoo.build_model("cnn_7layer", in_channels=3, input_size=32)
    # conv MACs = C_out * H_out * W_out * C_in * k * k; linear = in * out
    expected = (32 * 32 * 32 * 3 * 3 * 3        # ConvBlock(3, 32, 3, 1):    32x32 out,   884,736
                + 64 * 16 * 16 * 32 * 4 * 4     # ConvBlock(32, 64, 4, 2):   16x16 out, 8,388,608
                + 64 * 16 * 16 * 64 * 3 * 3     # ConvBlock(64, 64, 3, 1):   16x16 out, 9,437,184
                + 128 * 8 * 8 * 64 * 4 * 4      # ConvBlock(64, 128, 4, 2):    8x8 out, 8,388,608
                + 128 * 4 * 4 * 128 * 4 * 4     # ConvBlock(128, 128, 4, 2):   4x4 out, 4,194,304
                + 2048 * 100 + 100 * 10)        # FC(2048, 100), FC(100, 10):  205,800
    assert expected == 31_499_240
    m.train()
    stats = m[2].running_mean.clone()
    assert count_macs(m, (3, 32, 32)) == expected
    assert m.training and m[2].training and torch.equal(m[2].running_mean, stats)  # state untouched


def test_count_macs_of_compacted_model():
    m, _, cmask = setup("cnn_7layer", 3, 32, seed=5)
    w = [int(cmask[k].sum()) for k in prunable_channels(m)]
    expected = (w[0] * 32 * 32 * 3 * 9 + w[1] * 16 * 16 * w[0] * 16 + w[2] * 16 * 16 * w[1] * 9
                + w[3] * 8 * 8 * w[2] * 16 + w[4] * 4 * 4 * w[3] * 16 + w[4] * 16 * 100 + 100 * 10)
    assert count_macs(compact(m, cmask), (3, 32, 32)) == expected
    with pytest.raises(ValueError, match="input_shape"):
        count_macs(m, (3, 32))


def test_compaction_of_a_non_zoo_sequential():
    # nested Sequential, LeakyReLU, max and adaptive pooling, Dropout after Flatten
    m = nn.Sequential(model_zoo.Normalize((0.5,) * 3, (0.2,) * 3),
                      nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.1)),
                      nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(24, 7), nn.ReLU(),
                      nn.Linear(7, 3))
    randomize_batchnorm(m)
    m.eval()
    assert list(prunable_channels(m)) == ["1.0", "3"]
    cmask = {"1.0": torch.arange(8) % 3 == 0, "3": torch.tensor([True, False, False, True, True, False])}
    masked = copy.deepcopy(m)
    channel_to_weight_mask(masked, cmask).apply_(masked)
    small = compact(m, cmask)
    assert small[3].weight.shape == (3, 3, 3, 3) and small[9].weight.shape == (7, 12)
    x = torch.rand(5, 3, 12, 12)
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() <= 1e-5
