"""RSLoss / NRSLoss (seed 001 eq. 4-5) and Network Slimming's L1: values and gradient paths."""

import pytest
import torch

import model_zoo
from abcrown_plugins.bounds import input_box, interval_propagate
from abcrown_plugins.errors import UserError
from abcrown_plugins.regularizers import BatchNormL1, StabilityTerm, make_regularizer, nrs_loss, rs_loss
from tests.conftest import randomize_batchnorm


def net():
    m = model_zoo.build_model("cnn_small", in_channels=3, input_size=32)
    randomize_batchnorm(m)
    return m


def bn_and_conv(m):
    bns = [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    return bns, convs


@pytest.mark.parametrize("train_mode", [False, True])
def test_nrs_sends_no_gradient_to_gamma(train_mode):
    m = net().train(train_mode)
    x = torch.rand(6, 3, 32, 32)
    res = interval_propagate(m, *input_box(x, 8 / 255), record=True)
    with_bn = [r for r in res.relus if r.bn is not None]
    assert len(with_bn) == 2
    for r in with_bn:
        conv = dict(m.named_modules())[str(int(r.name) - 2)]
        g_gamma, g_conv, g_beta = torch.autograd.grad(nrs_loss([r]), [r.bn.weight, conv.weight, r.bn.bias],
                                                      retain_graph=True, allow_unused=True)
        assert g_gamma is None or torch.count_nonzero(g_gamma) == 0  # exactly zero to its gamma
        assert g_conv.abs().sum() > 0 and g_beta.abs().sum() > 0
        rs_gamma = torch.autograd.grad(rs_loss([r]), r.bn.weight, retain_graph=True)[0]
        assert rs_gamma.abs().sum() > 0                   # RSLoss does reach it
    # NRS terms of every conv block together send nothing to the last block's gamma
    last = with_bn[-1]
    g_nrs = torch.autograd.grad(nrs_loss(with_bn), last.bn.weight, retain_graph=True, allow_unused=True)[0]
    assert g_nrs is None or torch.count_nonzero(g_nrs) == 0


def test_rs_does_send_gradient_to_gamma():
    m = net().eval()
    StabilityTerm("rs", 0.01).term(m, torch.rand(6, 3, 32, 32), 8 / 255).backward()
    bns, _ = bn_and_conv(m)
    assert all(bn.weight.grad.abs().sum() > 0 for bn in bns)


def test_values_match_the_formulas():
    m = net().eval()
    x = torch.rand(4, 3, 32, 32)
    res = interval_propagate(m, *input_box(x, 4 / 255), record=True)
    rs_expected, nrs_expected = [], []
    for r in res.relus:
        rs_expected.append((-torch.tanh(1 + r.lower * r.upper)).flatten(1))
        if r.bn is not None:
            g2 = r.bn.weight.view(1, -1, 1, 1) ** 2
            nrs_expected.append((-torch.tanh(1 + r.lower * r.upper / g2)).flatten(1))
        else:
            nrs_expected.append((-torch.tanh(1 + r.lower * r.upper)).flatten(1))
    assert torch.allclose(rs_loss(res.relus), torch.cat(rs_expected, 1).mean(), atol=1e-6)
    assert torch.allclose(nrs_loss(res.relus), torch.cat(nrs_expected, 1).mean(), atol=1e-5)
    # the term reuses given bounds: same value as computing them itself, weight applied
    term = StabilityTerm("nrs", 0.5)
    assert torch.allclose(term.term(m, x, 4 / 255, res), 0.5 * nrs_loss(res.relus))
    assert torch.allclose(term.term(m, x, 4 / 255, None), 0.5 * nrs_loss(res.relus), atol=1e-6)


def test_unstable_neurons_cost_more():
    m = net().eval()
    x = torch.rand(4, 3, 32, 32)
    small = interval_propagate(m, *input_box(x, 0.0), record=True)
    big = interval_propagate(m, *input_box(x, 16 / 255), record=True)
    assert nrs_loss(big.relus) > nrs_loss(small.relus)
    assert -1 <= float(nrs_loss(small.relus)) <= 1


def test_bn_l1_after_backward_adds_the_subgradient():
    m = net()
    bns, _ = bn_and_conv(m)
    for bn in bns:
        bn.weight.grad = torch.ones_like(bn.weight)
    reg = BatchNormL1(1e-2)
    assert float(reg.term(m, torch.rand(1, 3, 32, 32), 0.1)) == 0.0
    reg.after_backward(m)
    for bn in bns:
        assert torch.allclose(bn.weight.grad, 1 + 1e-2 * torch.sign(bn.weight))
    assert reg.penalty(m) == pytest.approx(1e-2 * sum(float(bn.weight.abs().sum()) for bn in bns), rel=1e-5)


def test_registry_lists_names():
    with pytest.raises(UserError, match="valid: rs, nrs, bn_l1"):
        make_regularizer("nrss", 0.1)
    with pytest.raises(ValueError):
        StabilityTerm("l2", 0.1)


def test_fused_nrs_backward_matches_autograd():
    from abcrown_plugins.regularizers.stability import _NormalisedProductTanh

    g = torch.Generator().manual_seed(0)
    mid = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    rad = torch.rand(3, 4, 2, 2, generator=g, dtype=torch.float64)
    c1 = torch.rand(1, 4, 1, 1, generator=g, dtype=torch.float64) + 0.5
    c0 = torch.randn(1, 4, 1, 1, generator=g, dtype=torch.float64)
    inputs = (mid.requires_grad_(), rad.requires_grad_(), c1, c0.requires_grad_())
    assert torch.autograd.gradcheck(_NormalisedProductTanh.apply, inputs)
    lo, hi = mid - rad, mid + rad
    ref = torch.tanh(1 + (c1 * lo + c0) * (c1 * hi + c0)).sum()
    assert torch.allclose(_NormalisedProductTanh.apply(*inputs), ref)
    # the gradient reaches the box ends exactly as autograd through the plain formula
    ref.backward()
    want = [t.grad.clone() for t in (mid, rad, c0)]
    for t in (mid, rad, c0):
        t.grad = None
    _NormalisedProductTanh.apply(*inputs).backward()
    for got, exp in zip((mid.grad, rad.grad, c0.grad), want):
        assert torch.allclose(got, exp)
