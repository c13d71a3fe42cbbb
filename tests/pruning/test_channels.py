"""Channel masks: structure detection, validation, weight masks, score-based pruning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import model_zoo
from abcrown_plugins.pruning import Mask
from abcrown_plugins.pruning.channels import (bn_of, channel_density, channel_groups, channel_to_weight_mask,
                                              ones_channel_mask, prunable_channels, prune_channels_by_score,
                                              random_channel_mask, validate_channel_mask)
from model_zoo.layers import BasicBlock, Normalize
from tests.conftest import randomize_batchnorm

ZOO = ["cnn_7layer", "cnn_small", "resnet_small", "resnet18_nr"]


def build(name: str, channels: int = 3, size: int = 32) -> nn.Module:
    return model_zoo.build_model(name, in_channels=channels, input_size=size)


def test_cnn_7layer_every_conv_prunable_classifier_not():
    m = build("cnn_7layer")
    convs = prunable_channels(m)
    assert list(convs) == ["1", "4", "7", "10", "13"]  # includes the last conv before Flatten
    assert all(isinstance(c, nn.Conv2d) for c in convs.values())
    assert channel_groups(m) == [[c] for c in convs]
    bns = bn_of(m)
    assert {k: bns[k] for k in convs} == {k: m[int(k) + 1] for k in convs}


def test_resnet_groups_follow_residual_adds():
    m = build("resnet_small")
    assert sorted(map(sorted, channel_groups(m))) == sorted([
        ["1"], ["4.conv1"], ["4.conv2", "4.shortcut.0"], ["5.conv1"], ["5.conv2", "5.shortcut.0"]])
    r = build("resnet18_nr")
    groups = channel_groups(r)
    # identity shortcuts couple the stem with both layer1 blocks, and each later stage's blocks
    assert ["1", "4.conv2", "5.conv2"] in groups
    assert ["6.conv2", "6.shortcut.0", "7.conv2"] in groups
    assert ["10.conv2", "10.shortcut.0", "11.conv2"] in groups
    assert sum(len(g) for g in groups) == len(prunable_channels(r)) == 20  # stem + 16 block convs + 3 shortcuts
    assert len({c for g in groups for c in g}) == 20
    for g in groups:  # coupled convs have equal widths
        assert len({prunable_channels(r)[c].out_channels for c in g}) == 1


def test_unknown_structure_is_not_pruned():
    lin = lambda n: nn.Linear(n, 3)  # noqa: E731
    # conv feeding the output; BN after ReLU; unknown layer after conv (a conv without BatchNorm is
    # prunable: masking its filter and bias makes the channel exactly 0; test_channels_generic checks it)
    assert prunable_channels(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))) == {}
    assert prunable_channels(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2), nn.Flatten(),
                                           lin(32))) == {}
    assert prunable_channels(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sigmoid(), nn.Flatten(),
                                           lin(32))) == {}
    assert prunable_channels(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, affine=False), nn.ReLU(),
                                           nn.Flatten(), lin(32))) == {}
    ok = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), lin(32))
    assert list(prunable_channels(ok)) == ["0"]
    # an identity residual onto the network input cannot be pruned (the input's channels are fixed)
    res = nn.Sequential(Normalize((0.0,) * 4, (1.0,) * 4), BasicBlock(4, 4), nn.Flatten(), lin(4 * 36))
    assert list(prunable_channels(res)) == ["1.conv1"]


@pytest.mark.parametrize("name", ZOO)
def test_ones_and_random_masks_validate(name):
    m = build(name)
    ones = ones_channel_mask(m)
    validate_channel_mask(m, ones)
    assert channel_density(ones) == 1.0
    cm = random_channel_mask(m, 0.5, torch.Generator().manual_seed(1))
    validate_channel_mask(m, cm)
    for g in channel_groups(m):
        assert all(torch.equal(cm[c], cm[g[0]]) for c in g)
    assert 0.4 < channel_density(cm) < 0.6


def test_validation_names_the_key():
    m = build("resnet_small")
    good = ones_channel_mask(m)
    with pytest.raises(ValueError, match="'nope'"):
        validate_channel_mask(m, {**good, "nope": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="lacks .*'4.conv1'"):
        validate_channel_mask(m, {k: v for k, v in good.items() if k != "4.conv1"})
    with pytest.raises(ValueError, match="'1' has shape"):
        validate_channel_mask(m, {**good, "1": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="'1' must be a bool"):
        validate_channel_mask(m, {**good, "1": torch.ones(16)})
    with pytest.raises(ValueError, match="'4.conv1' keeps no channel"):
        validate_channel_mask(m, {**good, "4.conv1": torch.zeros(16, dtype=torch.bool)})
    half = torch.arange(32) % 2 == 0
    with pytest.raises(ValueError, match="'5.shortcut.0' differs from '5.conv2'"):
        validate_channel_mask(m, {**good, "5.conv2": half})


@pytest.mark.parametrize("name", ["cnn_7layer", "resnet18_nr"])
def test_weight_mask_zeros_exactly_the_pruned_channels(name):
    m = build(name)
    randomize_batchnorm(m)
    cm = random_channel_mask(m, 0.5, torch.Generator().manual_seed(2))
    wm = channel_to_weight_mask(m, cm)
    wm.validate(m)
    modules = dict(m.named_modules())
    bns = {c: n for n, mod in modules.items() for c, b in bn_of(m).items() if b is mod}
    expected = set()
    for c, keep in cm.items():
        expected |= {f"{c}.weight", f"{bns[c]}.weight", f"{bns[c]}.bias"}
        if modules[c].bias is not None:
            expected.add(f"{c}.bias")
        w = wm[f"{c}.weight"]
        assert w.shape == modules[c].weight.shape
        assert torch.equal(w.flatten(1).all(1), keep) and torch.equal(w.flatten(1).any(1), keep)  # whole filters
        for key in (f"{bns[c]}.weight", f"{bns[c]}.bias") + ((f"{c}.bias",) if modules[c].bias is not None else ()):
            assert torch.equal(wm[key], keep), key
    assert set(wm) == expected
    # applied, every pruned channel's BatchNorm output is exactly 0, in eval and train mode
    wm.apply_(m)
    outs = {}
    hooks = [modules[bns[c]].register_forward_hook(lambda mod, i, o, c=c: outs.__setitem__(c, o)) for c in cm]
    for train in (False, True):
        m.train(train)
        m(torch.rand(4, 3, 32, 32))
        for c, keep in cm.items():
            assert (outs[c][:, ~keep] == 0).all(), c
            assert (outs[c][:, keep] != 0).any(), c
    for h in hooks:
        h.remove()


def test_weight_mask_with_base_is_intersection_plus_new_keys():
    m = build("cnn_7layer")
    g = torch.Generator().manual_seed(3)
    base = Mask({"1.weight": torch.rand(32, 3, 3, 3, generator=g) < 0.7,
                 "17.weight": torch.rand(100, 2048, generator=g) < 0.5})
    cm = random_channel_mask(m, 0.5, g)
    alone = channel_to_weight_mask(m, cm)
    both = channel_to_weight_mask(m, cm, base=base)
    assert set(both) == set(alone) | set(base)
    assert torch.equal(both["1.weight"], base["1.weight"] & alone["1.weight"])
    assert torch.equal(both["17.weight"], base["17.weight"])
    assert torch.equal(both["4.weight"], alone["4.weight"])


@pytest.mark.parametrize("rate", [0.11, 0.2, 0.5])
def test_score_pruning_exact_and_shrinking_cnn(rate):
    m = build("cnn_7layer")
    g = torch.Generator().manual_seed(4)
    cm = ones_channel_mask(m)
    for _ in range(4):
        scores = {k: torch.rand(v.numel(), generator=g) for k, v in cm.items()}
        kept = sum(int(v.sum()) for v in cm.values())
        new = prune_channels_by_score(m, cm, scores, rate)
        validate_channel_mask(m, new)
        assert all(not (new[k] & ~cm[k]).any() for k in cm)  # masks only shrink
        assert sum(int(v.sum()) for v in new.values()) == kept - round(rate * kept)  # exact
        # the removed channels are the lowest-scored among the kept ones (bar each layer's best)
        removed = torch.cat([scores[k][cm[k] & ~new[k]] for k in cm])
        best = {k: scores[k][cm[k]].max() for k in cm}
        still = torch.cat([scores[k][new[k] & (scores[k] != best[k])] for k in cm])
        assert removed.numel() == 0 or still.numel() == 0 or removed.max() <= still.min()
        cm = new


@pytest.mark.parametrize("name", ["cnn_7layer", "resnet18_nr"])
def test_layerwise_channel_pruning_is_uniform_and_exact(name):
    m = build(name)
    g = torch.Generator().manual_seed(6)
    cm = ones_channel_mask(m)
    groups = channel_groups(m)
    for _ in range(3):
        scores = {k: torch.rand(v.numel(), generator=g) for k, v in cm.items()}
        new = prune_channels_by_score(m, cm, scores, 0.5, strategy="layerwise")
        validate_channel_mask(m, new)
        for gr in groups:
            kept, now = int(cm[gr[0]].sum()), int(new[gr[0]].sum())
            assert not (new[gr[0]] & ~cm[gr[0]]).any()
            assert now == kept - min(round(0.5 * kept), kept - 1)  # exact per group, never empty
            # within the group the removed units are the lowest-scored (summed over members)
            unit = sum(scores[k] for k in gr)
            removed, still = unit[cm[gr[0]] & ~new[gr[0]]], unit[new[gr[0]]]
            assert removed.numel() == 0 or removed.max() <= still.min()
        cm = new
    with pytest.raises(Exception, match="unknown channel pruning strategy 'uniform'.*global, layerwise"):
        prune_channels_by_score(m, cm, scores, 0.5, strategy="uniform")


def test_score_pruning_couples_groups_and_never_empties():
    m = build("resnet18_nr")
    g = torch.Generator().manual_seed(5)
    cm = ones_channel_mask(m)
    groups = channel_groups(m)
    for _ in range(6):
        scores = {k: torch.randn(v.numel(), generator=g) for k, v in cm.items()}
        units = sum(int(cm[gr[0]].sum()) for gr in groups)
        new = prune_channels_by_score(m, cm, scores, 0.3)
        validate_channel_mask(m, new)  # coupled equal, nothing empty
        assert all(not (new[k] & ~cm[k]).any() for k in cm)
        new_units = sum(int(new[gr[0]].sum()) for gr in groups)
        removable = units - len(groups)
        assert new_units == units - min(round(0.3 * units), removable)
        cm = new
    # heavy pruning ends with one channel per group, never zero
    for _ in range(10):
        cm = prune_channels_by_score(m, cm, {k: torch.rand(v.numel(), generator=g) for k, v in cm.items()}, 0.9)
    assert all(int(v.sum()) == 1 for v in cm.values())


def test_group_scores_are_summed():
    m = build("resnet_small")
    cm = ones_channel_mask(m)
    scores = {k: torch.ones(v.numel()) * 10 for k, v in cm.items()}
    # in group (5.conv2, 5.shortcut.0), channel 0 is weak in conv2 but strong in the shortcut:
    # the sum (10.5) beats channel 1 (0.2 + 0.2), so channel 1 goes
    scores["5.conv2"][0], scores["5.shortcut.0"][0] = 0.0, 10.5
    scores["5.conv2"][1], scores["5.shortcut.0"][1] = 0.2, 0.2
    total = sum(int(cm[gr[0]].sum()) for gr in channel_groups(m))
    new = prune_channels_by_score(m, cm, scores, 1.4 / total)  # round(1.4) = 1 unit
    assert not new["5.conv2"][1] and not new["5.shortcut.0"][1]
    assert int(sum((~v).sum() for v in new.values())) == 2


def test_score_pruning_rejects_bad_input():
    m = build("cnn_small")
    cm = ones_channel_mask(m)
    scores = {k: torch.rand(v.numel()) for k, v in cm.items()}
    with pytest.raises(ValueError, match="rate"):
        prune_channels_by_score(m, cm, scores, 1.0)
    with pytest.raises(ValueError, match="lack .*'4'"):
        prune_channels_by_score(m, cm, {"1": scores["1"]}, 0.5)
    with pytest.raises(ValueError, match="'1' contain NaN"):
        prune_channels_by_score(m, cm, {**scores, "1": torch.full((16,), float("nan"))}, 0.5)
    with pytest.raises(ValueError, match="'4' have shape"):
        prune_channels_by_score(m, cm, {**scores, "4": torch.rand(3)}, 0.5)
