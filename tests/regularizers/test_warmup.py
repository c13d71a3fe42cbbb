"""Warm-up regularisers of IBP training (Shi et al. 2021) and bounds with the clean pass's BatchNorm statistics."""

import copy

import pytest
import torch
import torch.nn.functional as F

import model_zoo
from abcrown_plugins.bounds import CleanBatchStats, ReluBounds, input_box, interval_propagate, margin_spec
from abcrown_plugins.config import load_config
from abcrown_plugins.errors import UserError
from abcrown_plugins.regularizers import WarmupTerm, make_regularizer, tightness_and_balance
from abcrown_plugins.regularizers.warmup import input_radius
from abcrown_plugins.training.objectives import IBPObjective
from tests.conftest import randomize_batchnorm

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def resnet():
    m = model_zoo.build_model("resnet18_nr", in_channels=3, input_size=32, mean=MEAN, std=STD)
    randomize_batchnorm(m)
    return m


def test_terms_follow_their_formulas_on_a_hand_made_layer():
    lo = torch.tensor([[5.0, 6.0, -3.0, -1.0, -0.5]])
    up = torch.tensor([[7.0, 8.0, -1.0, -0.5, 0.5]])
    centre, rad = (lo + up) / 2, (up - lo) / 2
    r0, tol = torch.tensor(0.1), 0.5
    tight, balance = tightness_and_balance([ReluBounds("r", lo, up)], r0, tol)
    assert tight.item() == pytest.approx(max(0.0, tol - 0.1 / rad.mean().item()) / tol)
    act, inact = [0, 1], [2, 3]
    mean_ratio = centre[0, act].sum() / -centre[0, inact].sum()
    dev = (centre - centre.mean()) ** 2
    var_ratio = dev[0, act].sum() / dev[0, inact].sum()
    term = lambda q: max(0.0, tol - min(q, 1 / q)) / tol  # noqa: E731
    assert balance.item() == pytest.approx(term(mean_ratio.item()) + term(var_ratio.item()))
    assert balance.item() > 0 and tight.item() > 0


def test_a_layer_without_inactive_neurons_adds_no_balance_term():
    lo, up = torch.ones(2, 4), 2 * torch.ones(2, 4)
    _, balance = tightness_and_balance([ReluBounds("r", lo, up)], torch.tensor(1.0), 0.5)
    assert balance.item() == 0.0


def test_strength_decays_to_zero_at_the_target_radius_and_gradients_reach_the_weights():
    m = resnet().train()
    x = torch.rand(8, 3, 32, 32)
    term = make_regularizer("warmup", 0.5, eps=2 / 255, tol=0.5)
    assert isinstance(term, WarmupTerm)
    res = interval_propagate(m, *input_box(x, 1 / 255), record=True)
    half = term.term(m, x, 1 / 255, res)
    assert half.item() > 0 and set(term.last) == {"tightness", "relu_balance"}
    assert half.item() == pytest.approx(0.5 * 0.5 * (term.last["tightness"] + term.last["relu_balance"]), rel=1e-5)
    conv = next(mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d))
    assert torch.autograd.grad(half, conv.weight)[0].abs().sum() > 0
    full = term.term(m, x, 2 / 255, interval_propagate(m, *input_box(x, 2 / 255), record=True))
    assert full.item() == 0.0 and not full.requires_grad
    assert term.term(m, x, 0.0, None).item() == 0.0


def test_input_radius_is_measured_after_the_normalisation():
    m = resnet()
    x = torch.full((2, 3, 32, 32), 0.5)
    expected = torch.tensor([(1 / 255) / s for s in STD]).mean()
    assert input_radius(m, x, 1 / 255).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("arch", ["cnn_small", "resnet18_nr"])
def test_clean_statistics_bound_the_network_that_normalises_with_them(arch):
    m = model_zoo.build_model(arch, in_channels=3, input_size=32, mean=MEAN, std=STD)
    randomize_batchnorm(m)
    m.train()
    x = torch.rand(16, 3, 32, 32)
    with CleanBatchStats(m) as rec:
        m(x)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert set(rec.stats) == set(bns)
    lo, up = input_box(x, 4 / 255)
    res = interval_propagate(m, lo, up, bn_stats=rec.stats)
    # the same network with the clean statistics as fixed (eval-mode) statistics
    fixed = copy.deepcopy(m).eval()
    for bn, frozen in zip(bns, [mod for mod in fixed.modules() if isinstance(mod, torch.nn.BatchNorm2d)]):
        mean, var = rec.stats[bn]
        frozen.running_mean.copy_(mean.detach())
        frozen.running_var.copy_(var.detach())
    with torch.no_grad():
        ref = interval_propagate(fixed, lo, up, record=False)
        assert torch.allclose(res.lower, ref.lower, rtol=1e-4, atol=1e-4)
        assert torch.allclose(res.upper, ref.upper, rtol=1e-4, atol=1e-4)
        for _ in range(20):
            out = fixed(lo + (up - lo) * torch.rand_like(lo))
            assert (out >= res.lower - 1e-4).all() and (out <= res.upper + 1e-4).all()
        # with the centre's statistics the bounds differ (deep layers see a shifted centre)
        centre = interval_propagate(m, lo, up)
        assert not torch.allclose(centre.lower, res.lower, atol=1e-3)


def test_the_clean_objective_uses_the_statistics_of_its_clean_pass():
    m = resnet().train()
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    out = IBPObjective(2 / 255, 1.0, 10, "clean")(m, x, y, 2 / 255)
    with CleanBatchStats(m) as rec:
        m(x)
    ref = interval_propagate(m, *input_box(x, 2 / 255), spec=margin_spec(y, 10), bn_stats=rec.stats)
    assert torch.allclose(out.bounds.lower, ref.lower, rtol=1e-5, atol=1e-5)
    robust = F.cross_entropy(torch.cat([torch.zeros_like(ref.lower[:, :1]), -ref.lower], 1), torch.zeros_like(y))
    assert out.loss.item() == pytest.approx(robust.item(), rel=1e-5)


def test_config_refuses_the_warm_up_regulariser_without_certified_training(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  method: standard\nregularizer:\n  warmup: 0.5\n")
    with pytest.raises(UserError, match="regularizer.warmup"):
        load_config(p)
    p.write_text("training:\n  method: ibp\n  ibp_bn_stats: clean\nregularizer:\n  warmup: 0.5\n")
    cfg = load_config(p)
    assert cfg.regularizer.warmup == 0.5 and cfg.training.ibp_bn_stats == "clean"
