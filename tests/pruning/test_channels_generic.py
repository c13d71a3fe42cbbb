"""Channel coupling and compaction of any network: concatenations, grouped/depthwise convs, user code, fx, ONNX."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import model_zoo
from abcrown_plugins.errors import UserError
from abcrown_plugins.pruning.channels import (bn_of, channel_graph, channel_groups, channel_to_weight_mask,
                                              ones_channel_mask, prunable_channels, prune_channels_by_score,
                                              random_channel_mask)
from abcrown_plugins.pruning.compaction import compact
from model_zoo.layers import Normalize
from tests.conftest import randomize_batchnorm
from tests.pruning.test_channels_nets import CatNet, CifarResNet, abcrown_cnn, fx_traced, onnx_graph

ZOO = ["cnn_7layer", "cnn_small", "resnet_small", "resnet18_nr"]


def zoo(name: str) -> nn.Module:
    m = model_zoo.build_model(name, in_channels=3, input_size=32, num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    m.input_shape = (3, 32, 32)
    return m


def consumers(model: nn.Module) -> dict[str, set[tuple]]:
    g = channel_graph(model)
    return {grp[0]: {(c.name, c.kind, c.hw, c.offset) for c in cons} for grp, cons in zip(g.groups, g.consumers)}


# ----------------------------------------------------------------------------------------------- coupling

def test_concat_grouped_depthwise_residual_coupling():
    m = CatNet()
    # the depthwise conv and the residual conv share c.0's channels; stem.0 feeds a grouped conv and
    # g.0 is grouped: neither is prunable
    assert channel_groups(m) == [["a.0"], ["b.0"], ["c.0", "dw.0", "r.0"]]
    assert channel_graph(m).blocked == {"stem.0", "g.0"}
    assert {c: b for c, b in channel_graph(m).bn.items()} == {
        "a.0": "a.1", "b.0": "b.1", "c.0": "c.1", "dw.0": "dw.1", "r.0": "r.1"}
    # concatenation offsets: cat([a (6), b (10)]) -> c.0; cat([z (12), y (16)]) -> pool(2) -> flatten -> fc
    assert consumers(m) == {
        "a.0": {("c.0", "conv", 1, 0), ("fc", "linear", 4, 12)},
        "b.0": {("c.0", "conv", 1, 6), ("fc", "linear", 4, 18)},
        "c.0": {("r.0", "conv", 1, 0), ("fc", "linear", 4, 0)},
    }


def test_user_code_flatten_view_functional_relu_and_inplace_add():
    cnn = abcrown_cnn()
    assert channel_groups(cnn) == [["0"], ["3"]]
    assert consumers(cnn) == {"0": {("3", "conv", 1, 0)}, "3": {("7", "linear", 64, 0)}}  # view(N, -1)
    res = CifarResNet()
    assert channel_groups(res) == [["conv1", "layer1.0.conv2"], ["layer1.0.conv1"], ["layer1.1.conv1"],
                                   ["layer1.1.conv2", "layer1.1.shortcut.0"], ["layer2.0.conv1"],
                                   ["layer2.0.conv2", "layer2.0.shortcut.0"]]
    assert consumers(res)["layer2.0.conv2"] == {("linear", "linear", 16, 0)}


@pytest.mark.parametrize("name", ZOO)
def test_fx_graph_module_has_the_zoo_walks_groups(name):
    m = zoo(name)
    gm = fx_traced(m)
    assert channel_groups(gm) == channel_groups(m)
    assert channel_graph(gm).consumers == channel_graph(m).consumers
    assert {c: type(b) for c, b in bn_of(gm).items()} == {c: type(b) for c, b in bn_of(m).items()}


def test_what_makes_a_conv_unprunable():
    def net(body):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
                self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
                self.fc = nn.Linear(4 * 8 * 8, 2)

            def forward(self, x):
                h = body(self, x)
                return self.fc(h.flatten(1))
        return Net()

    ok = net(lambda s, x: F.relu(s.b2(s.c2(F.relu(s.b1(s.c1(x)))))))
    assert channel_groups(ok) == [["c1"], ["c2"]]
    # sigmoid maps 0 to 0.5; adding a constant shifts 0
    assert channel_groups(net(lambda s, x: s.b2(s.c2(torch.sigmoid(s.b1(s.c1(x))))))) == [["c2"]]
    assert channel_groups(net(lambda s, x: s.b2(s.c2(s.b1(s.c1(x)) + 1.0)))) == [["c2"]]
    # multiplying by a number keeps 0; by a per-channel constant it cannot be sliced
    assert channel_groups(net(lambda s, x: s.b2(s.c2(s.b1(s.c1(x)) * 2.0)))) == [["c1"], ["c2"]]
    scaled = net(lambda s, x: s.b2(s.c2(s.b1(s.c1(x)) * s.scale)))
    scaled.register_buffer("scale", torch.rand(1, 4, 1, 1))
    assert channel_groups(scaled) == [["c2"]]
    # a conv called twice (shared weights) keeps its inputs and outputs whole; a BatchNorm that
    # does not follow its conv directly
    assert channel_groups(net(lambda s, x: s.b2(s.c2(s.b2(s.c2(s.b1(s.c1(x)))))))) == []
    assert channel_groups(net(lambda s, x: s.b2(F.relu(s.c2(s.b1(s.c1(x))))))) == [["c1"]]
    # a reshape that is not a flatten, a concatenation along the height, a slice of channels
    assert channel_groups(net(lambda s, x: s.b2(s.c2(s.b1(s.c1(x)).view(x.size(0), 4, 8, 8))))) == [["c2"]]
    assert channel_groups(net(lambda s, x: s.b2(s.c2(torch.cat([s.b1(s.c1(x))] * 2, 2)[:, :, :8])))) == [["c2"]]
    # an add with a tensor whose channels are unknown (F.pad has no rule; on the raw input that is no
    # error), and the logits
    assert channel_groups(net(lambda s, x: s.b2(s.c2(s.b1(s.c1(x)) + F.pad(x, (0, 0, 0, 0, 0, 1)))))) == [["c2"]]
    logits = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert channel_groups(logits) == []


def test_concatenation_with_the_input_uses_the_known_width():
    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
            self.c2, self.b2 = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            h = torch.cat([x, F.relu(self.b1(self.c1(x)))], 1)        # 3 + 5 channels
            return self.fc(F.relu(self.b2(self.c2(h))).mean((2, 3)))  # mean over H, W: hw 1

    m = Dense()
    assert channel_groups(m) == [["c1"], ["c2"]]
    assert consumers(m) == {"c1": {("c2", "conv", 1, 3)}, "c2": {("fc", "linear", 1, 0)}}
    randomize_batchnorm(m)
    assert_compacts(m.eval(), (3, 8, 8))


def test_an_operation_without_a_rule_is_one_error_naming_it_and_the_node():
    class Rolled(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.b = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            return self.fc(torch.roll(F.relu(self.b(self.c(x))), 1, 2).flatten(1))

    with pytest.raises(UserError, match=r"no rule for the function torch\.roll \(node 'roll'\), which reads the "
                                      r"channels of conv 'c'"):
        prunable_channels(Rolled())

    class Custom(nn.Module):
        def forward(self, x):
            return x * 2

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, Custom) or super().is_leaf_module(m, qualname)

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), Custom(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    gm = fx.GraphModule(net, Tracer().trace(net))
    with pytest.raises(UserError, match=r"no rule for the layer Custom '2' \(node '_2'\), which reads the channels "
                                      r"of conv '0'"):
        channel_groups(gm)
    # where it reads no prunable channel (the logits, the raw input) it only blocks
    tail = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2),
                         Custom())
    assert channel_groups(fx.GraphModule(tail, Tracer().trace(tail))) == [["0"]]


def test_an_untraceable_model_is_one_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else self.c(-x)

    with pytest.raises(UserError, match="cannot read the channel structure of Branchy: torch.fx cannot trace it"):
        channel_groups(Branchy())


# ----------------------------------------------------------------------------------------------- compaction

def assert_compacts(model: nn.Module, shape: tuple[int, ...], keep: float = 0.5, seed: int = 0) -> nn.Module:
    """compact(model, cmask) equals the masked model (eval), has fewer parameters, same module names and types."""
    cmask = random_channel_mask(model, keep, torch.Generator().manual_seed(seed))
    masked = copy.deepcopy(model)
    channel_to_weight_mask(masked, cmask).apply_(masked)
    small = compact(model, cmask)
    x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        want, got = masked.eval()(x), small(x)
    assert (got - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max())), (got - want).abs().max()
    n = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert n(small) < n(model)
    assert [(k, type(v).__name__) for k, v in small.named_modules()] == [
        (k, type(v).__name__) for k, v in model.named_modules()]
    assert getattr(small, "input_shape", None) == getattr(model, "input_shape", None)  # kept on GraphModules too
    convs = dict(small.named_modules())
    for k, kp in cmask.items():
        assert convs[k].out_channels == convs[k].weight.shape[0] == int(kp.sum())
    return small


def _nets():
    out = [(f"{n}", lambda n=n: zoo(n)) for n in ZOO]
    out += [("catnet", CatNet), ("abcrown_cnn", abcrown_cnn), ("cifar_resnet", CifarResNet)]
    return out


@pytest.mark.parametrize("form", ["module", "fx"])
@pytest.mark.parametrize("name,make", _nets(), ids=[n for n, _ in _nets()])
def test_compaction_equals_masking(name, make, form):
    torch.manual_seed(0)
    m = make()
    randomize_batchnorm(m, torch.Generator().manual_seed(3))
    m.eval()
    shape = tuple(m.input_shape)
    net = m if form == "module" else fx_traced(m)
    assert prunable_channels(net)
    small = assert_compacts(net, shape)
    if name == "catnet":  # the depthwise conv keeps as many groups as channels
        dw = dict(small.named_modules())["dw.0"]
        assert dw.groups == dw.in_channels == dw.out_channels < 12


@pytest.mark.parametrize("name,make", [("resnet_small", lambda: zoo("resnet_small")), ("catnet", CatNet),
                                       ("cifar_resnet", CifarResNet)])
def test_compaction_of_imported_onnx_equals_masking(name, make):
    pytest.importorskip("abcrown_plugins.graph")
    torch.manual_seed(0)
    m = make()
    randomize_batchnorm(m, torch.Generator().manual_seed(4))
    shape = tuple(m.input_shape)
    gm = onnx_graph(m.eval(), shape)
    # same coupling under the importer's names; the exporter writes the zoo's Normalize as a 1x1 conv, which
    # (without BatchNorm, like every conv of a folded export) is a prunable group of its own
    extra = int(any(isinstance(x, model_zoo.layers.Normalize) for x in m.modules()))
    assert len(channel_groups(gm)) == len(channel_groups(m)) + extra
    assert_compacts(gm, shape)


def test_the_graph_tests_residual_net():
    nets = pytest.importorskip("tests.graph.nets")
    m = nets.residual_net()
    # c2 is grouped (2 groups), so c1 (its input, and the residual partner) and c2 stay whole
    assert channel_groups(m) == [["c3"]]
    assert consumers(m) == {"c3": {("fc1", "linear", 16, 8)}}
    assert_compacts(m, (3, 16, 16))


def test_normalize_as_first_layer_and_fx_names_match_the_channel_mask():
    m = nn.Sequential(Normalize((0.5,) * 3, (0.2,) * 3), nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
                      nn.Flatten(), nn.Linear(6 * 4 * 4, 3))
    gm = fx_traced(m)
    assert channel_groups(gm) == channel_groups(m) == [["1"]]
    cmask = random_channel_mask(m, 0.5, torch.Generator().manual_seed(0))
    assert compact(gm, cmask).get_submodule("5").in_features == int(cmask["1"].sum()) * 16


def test_convs_without_batchnorm_prune_by_magnitude_and_compact_exactly():
    """BatchNorm folded into the convs (how exported networks come): filters and biases masked, then removed."""
    from abcrown_plugins.errors import UserError as _UserError
    from abcrown_plugins.pruning.compaction import compact
    from abcrown_plugins.pruning.importance import bn_gamma_scores

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()
    assert sorted(prunable_channels(net)) == ["0", "2"] and bn_of(net) == {}
    scores = {c: net.get_submodule(c).weight.detach().abs().flatten(1).sum(1).double() for c in ("0", "2")}
    cmask = prune_channels_by_score(net, ones_channel_mask(net), scores, 0.5, "layerwise")
    mask = channel_to_weight_mask(net, cmask)
    assert "0.bias" in mask.to_dict() and not bool(mask["0.bias"].all())
    mask.apply_(net)
    small = compact(net, cmask)
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(small(x), net(x), atol=1e-6, rtol=1e-5)
    assert small[0].out_channels == 3 and small[2].in_channels == 3 and small[2].out_channels == 4
    with pytest.raises(_UserError, match="conv '0' has no BatchNorm after it.*struct_lth"):
        bn_gamma_scores(net, mask, None)
