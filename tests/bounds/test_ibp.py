"""IBP soundness by sampling, for every zoo model, plus agreement with auto_LiRPA."""

import pytest
import torch
from torch import nn

import model_zoo
from abcrown_plugins.bounds import (
    input_box,
    interval_propagate,
    lirpa_available,
    lirpa_bounds,
    margin_lower_bounds,
    margin_spec,
)
from abcrown_plugins.errors import UserError
from tests.conftest import assert_within, randomize_batchnorm, sample_box

GEOMETRIES = [(3, 32), (1, 28)]


def zoo_model(name, channels, size, train=False):
    m = model_zoo.build_model(name, in_channels=channels, input_size=size,
                              mean=(0.45,) * channels, std=(0.22,) * channels)
    randomize_batchnorm(m)
    return m.train(train)


def capture_relu_inputs(model):
    """Forward hooks recording the input of every ReLU and every BatchNorm, by module name."""
    seen, handles = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.ReLU, nn.BatchNorm2d)):
            handles.append(mod.register_forward_hook(
                lambda m, inp, out, name=name: seen.setdefault(name, []).append(inp[0].detach())))
    return seen, handles


@pytest.mark.parametrize("name", sorted(model_zoo.MODELS))
@pytest.mark.parametrize("channels,size", GEOMETRIES)
@pytest.mark.parametrize("eps", [0.0, 2 / 255, 0.03])
def test_ibp_output_bounds_contain_samples(name, channels, size, eps):
    model = zoo_model(name, channels, size)
    x = torch.rand(3, channels, size, size)
    lower, upper = input_box(x, eps)
    res = interval_propagate(model, lower, upper)
    samples = sample_box(lower, upper, 64)
    with torch.no_grad():
        out = model(samples.flatten(0, 1)).view(64, 3, -1)
    assert_within(out, res.lower, res.upper)
    assert (res.lower <= res.upper).all()
    if eps == 0:
        assert torch.allclose(res.lower, model(x), atol=1e-4)


@pytest.mark.parametrize("name", sorted(model_zoo.MODELS))
@pytest.mark.parametrize("channels,size", GEOMETRIES)
def test_relu_and_pre_bn_bounds_contain_samples(name, channels, size):
    model = zoo_model(name, channels, size)
    x = torch.rand(2, channels, size, size)
    lower, upper = input_box(x, 0.02)
    res = interval_propagate(model, lower, upper)
    relu_names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert [r.name for r in res.relus] == relu_names
    seen, handles = capture_relu_inputs(model)
    with torch.no_grad():
        model(sample_box(lower, upper, 32).flatten(0, 1))
    for h in handles:
        h.remove()
    bn_by_module = {m: n for n, m in model.named_modules()}
    with_bn = 0
    for r in res.relus:
        acts = seen[r.name][0].view(32, *r.lower.shape)
        assert_within(acts, r.lower, r.upper)
        if r.bn is not None:
            with_bn += 1
            pre = seen[bn_by_module[r.bn]][0].view(32, *r.pre_bn_lower.shape)
            assert_within(pre, r.pre_bn_lower, r.pre_bn_upper)
    assert with_bn >= 2


@pytest.mark.parametrize("name", sorted(model_zoo.MODELS))
def test_margin_bounds_sound_and_tighter_than_output_box(name):
    model = zoo_model(name, 3, 32)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    eps = 1 / 255
    res = margin_lower_bounds(model, x, y, eps, 10)
    lower, upper = input_box(x, eps)
    spec = margin_spec(y, 10)
    with torch.no_grad():
        out = model(sample_box(lower, upper, 64).flatten(0, 1)).view(64, 4, 10)
    margins = torch.einsum("nkc,snc->snk", spec, out)
    assert_within(margins, res.lower, res.upper)
    box = interval_propagate(model, lower, upper)
    naive = (box.lower.gather(1, y[:, None]) - box.upper)  # label lower - other upper
    naive = naive[~torch.nn.functional.one_hot(y, 10).bool()].view(4, 9)
    assert (res.lower >= naive - 1e-5).all()


def test_margin_spec_rows():
    spec = margin_spec(torch.tensor([2]), 4)
    assert spec.tolist() == [[[1, 0, -1, 0], [0, 1, -1, 0], [0, 0, -1, 1]]] or \
        torch.equal(spec[0] @ torch.tensor([0.0, 0.0, 5.0, 0.0]), torch.tensor([5.0, 5.0, 5.0]))
    f = torch.tensor([[0.1, 0.2, 3.0, 0.4]])
    assert (torch.einsum("nkc,nc->nk", spec, f) > 0).all()


def test_train_mode_batchnorm_bounds_are_sound_for_their_statistics():
    model = zoo_model("cnn_small", 3, 32, train=True)
    x = torch.rand(8, 3, 32, 32)
    lower, upper = input_box(x, 0.01)
    res = interval_propagate(model, lower, upper)
    # the box centre itself lies in the box; with centre statistics the network is a fixed
    # function, so its output at the centre must be inside the bounds
    with torch.no_grad():
        centre_out = model((lower + upper) / 2)
    assert_within(centre_out.unsqueeze(0), res.lower, res.upper)


def test_unknown_layer_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh())
    with pytest.raises(UserError, match="no rule for layer '1' \\(Tanh\\)"):
        interval_propagate(model, torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8))


needs_lirpa = pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA is not importable; install it from "
                                 "upstream (pip install --no-deps -e auto_LiRPA) to compare bounds with it")


@needs_lirpa
@pytest.mark.external
@pytest.mark.parametrize("name", sorted(model_zoo.MODELS))
def test_ibp_equals_auto_lirpa_ibp(name):
    model = zoo_model(name, 3, 32).eval()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    lower, upper = input_box(x, 2 / 255)
    ours = interval_propagate(model, lower, upper)
    lb, ub = lirpa_bounds(model, lower, upper, method="ibp")
    assert_close_1e5(ours.lower, lb)
    assert_close_1e5(ours.upper, ub)
    spec = margin_spec(y, 10)
    ours_m = interval_propagate(model, lower, upper, spec=spec)
    lb_m, _ = lirpa_bounds(model, lower, upper, method="ibp", spec=spec)
    assert_close_1e5(ours_m.lower, lb_m)


def assert_close_1e5(a, b):
    """|a - b| <= 1e-5, relative to the bound's magnitude once it exceeds 1 (float32 rounding)."""
    err = ((a - b).abs() / b.abs().clamp_min(1.0)).max().item()
    assert err <= 1e-5, f"relative difference {err:.3g}"


@needs_lirpa
@pytest.mark.external
@pytest.mark.parametrize("name", ["cnn_small", "resnet_small"])
def test_crown_bounds_sound_and_tighter(name):
    model = zoo_model(name, 3, 32).eval()
    x = torch.rand(2, 3, 32, 32)
    lower, upper = input_box(x, 1 / 255)
    lb, ub = lirpa_bounds(model, lower, upper, method="crown")
    with torch.no_grad():
        out = model(sample_box(lower, upper, 64).flatten(0, 1)).view(64, 2, 10)
    assert_within(out, lb, ub)
    ibp = interval_propagate(model, lower, upper)
    assert ((ub - lb).mean() <= (ibp.upper - ibp.lower).mean())


@pytest.mark.parametrize("name", sorted(model_zoo.MODELS))
def test_batchnorm_folding_gives_the_same_bounds(name):
    """record=False folds eval BatchNorms into convs: same bounds as the unfolded walk (to rounding)."""
    model = zoo_model(name, 3, 32).eval()
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 4, 9])
    lower, upper = input_box(x, 2 / 255)
    spec = margin_spec(y, 10)
    folded = interval_propagate(model, lower, upper, spec=spec, record=False)
    plain = interval_propagate(model, lower, upper, spec=spec, record=True)
    scale = 1 + plain.lower.abs().max()
    assert ((folded.lower - plain.lower).abs().max() / scale) < 1e-5
    assert ((folded.upper - plain.upper).abs().max() / scale) < 1e-5
    with torch.no_grad():
        out = model(sample_box(lower, upper, 32).flatten(0, 1)).view(32, 3, 10)
    assert_within(torch.einsum("nkc,snc->snk", spec, out), folded.lower, folded.upper)
