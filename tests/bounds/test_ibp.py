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


@needs_lirpa
@pytest.mark.external
@pytest.mark.parametrize("name", sorted(model_zoo.MODELS))
def test_crown_with_many_unstable_neurons_runs_and_is_sound(name):
    """Large eps: many unstable ReLUs push auto_LiRPA onto its dense patches path (which once
    failed with a shape error on the Normalize layer); the bounds must still hold."""
    torch.manual_seed(0)
    model = zoo_model(name, 1, 28).eval()
    x = torch.rand(1, 1, 28, 28)
    lower, upper = input_box(x, 0.1)
    spec = margin_spec(torch.tensor([7]), 10)
    lb, ub = lirpa_bounds(model, lower, upper, method="crown", spec=spec)
    with torch.no_grad():
        out = model(sample_box(lower, upper, 64).flatten(0, 1)).view(64, 1, 10)
    assert_within(torch.einsum("nkc,snc->snk", spec, out), lb, ub)


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


def _reference_ibp(model: nn.Sequential, lower, upper):
    """Plain-autograd IBP in lower/upper form (W+ / W- split): an independent formulation."""
    import torch.nn.functional as F
    from model_zoo.layers import Normalize

    lo, up = lower, upper
    for m in model:
        if isinstance(m, Normalize):  # increasing in every pixel (std > 0)
            lo, up = m(lo), m(up)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            op = (lambda t, w, b: F.conv2d(t, w, b, m.stride, m.padding)) if isinstance(m, nn.Conv2d) else F.linear
            wp, wn = m.weight.clamp_min(0), m.weight.clamp_max(0)
            lo, up = op(lo, wp, m.bias) + op(up, wn, None), op(up, wp, m.bias) + op(lo, wn, None)
        elif isinstance(m, nn.BatchNorm2d):
            centre = (lo + up) / 2
            mean, var = centre.mean((0, 2, 3)), centre.var((0, 2, 3), unbiased=False)
            scale = (m.weight / torch.sqrt(var + m.eps)).view(1, -1, 1, 1)
            shift = m.bias.view(1, -1, 1, 1) - mean.view(1, -1, 1, 1) * scale
            a, b = lo * scale + shift, up * scale + shift
            lo, up = torch.minimum(a, b), torch.maximum(a, b)
        elif isinstance(m, nn.ReLU):
            lo, up = lo.clamp_min(0), up.clamp_min(0)
        else:
            lo, up = m(lo), m(up)
    return lo, up


def test_train_mode_ibp_values_and_gradients_match_plain_autograd():
    """The fused ReLU, batch-statistics and BatchNorm steps give the same bounds and gradients."""
    torch.manual_seed(0)
    m = zoo_model("cnn_small", 3, 28, train=True).double()
    x = torch.rand(6, 3, 28, 28, dtype=torch.float64)
    lower, upper = input_box(x, 0.03)
    got = interval_propagate(m, lower, upper)
    (got.upper - got.lower).pow(2).sum().add(got.lower.sum()).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    lo, up = _reference_ibp(m, lower, upper)
    assert torch.allclose(got.lower, lo, atol=1e-9) and torch.allclose(got.upper, up, atol=1e-9)
    (up - lo).pow(2).sum().add(lo.sum()).backward()
    want_grads = {n: p.grad for n, p in m.named_parameters()}
    for n in grads:
        assert torch.allclose(grads[n], want_grads[n], rtol=1e-7, atol=1e-9), n


@pytest.mark.parametrize("train", [False, True])
def test_in_place_no_grad_path_equals_autograd_path(train):
    m = zoo_model("resnet_small", 3, 32, train=train)
    x = torch.rand(5, 3, 32, 32)
    lower, upper = input_box(x, 2 / 255)
    spec = margin_spec(torch.arange(5) % 10, 10)
    with_grad = interval_propagate(m, lower, upper, spec=spec, record=True)
    with torch.no_grad():
        for record in (True, False):
            r = interval_propagate(m, lower, upper, spec=spec, record=record)
            assert torch.allclose(r.lower, with_grad.lower, atol=1e-5)
            assert torch.allclose(r.upper, with_grad.upper, atol=1e-5)
            if record:  # the recorded ends were not overwritten by the in-place steps
                for a, b in zip(r.relus, with_grad.relus):
                    assert torch.equal(a.lower, b.lower.detach()) and torch.equal(a.upper, b.upper.detach())
                    assert bool((a.lower <= a.upper).all())
    assert torch.equal(x, x.clone()) and bool((lower <= upper).all())


def test_fused_interval_relu_and_batch_stats_gradients():
    from abcrown_plugins.bounds.ibp import _BatchStats, _IntervalRelu, batch_stats

    g = torch.Generator().manual_seed(1)
    mid = torch.randn(3, 4, 5, dtype=torch.float64, generator=g).requires_grad_()
    rad = torch.rand(3, 4, 5, dtype=torch.float64, generator=g).requires_grad_()
    for pick in (slice(0, 4), slice(0, 2), slice(2, 4), slice(1, 2), slice(3, 4)):
        assert torch.autograd.gradcheck(lambda a, b: _IntervalRelu.apply(a, b)[pick], (mid, rad))
    new_mid, new_rad, lo, up = _IntervalRelu.apply(mid, rad)
    assert torch.allclose(lo, mid - rad) and torch.allclose(up, mid + rad)
    assert torch.allclose(new_mid - new_rad, (mid - rad).clamp_min(0))
    assert torch.allclose(new_mid + new_rad, (mid + rad).clamp_min(0))
    for shape in ((4, 3, 5, 5), (6, 3)):
        x = torch.randn(*shape, dtype=torch.float64, generator=g).requires_grad_()
        assert torch.autograd.gradcheck(_BatchStats.apply, (x,))
        dims = [0] + list(range(2, x.dim()))
        var, mean = torch.var_mean(x, dims, unbiased=False)
        got_mean, got_var = batch_stats(x)
        assert torch.allclose(got_mean, mean) and torch.allclose(got_var, var)
