"""Training methods: FGSM+GradAlign and CROWN-IBP objectives, regularisers inside the loop."""

import dataclasses

import pytest
import torch

from abcrown_plugins.bounds import lirpa_available
from abcrown_plugins.config import build_config
from abcrown_plugins.errors import UserError
from abcrown_plugins.models import model_for
from abcrown_plugins.regularizers import BatchNormL1, StabilityTerm, nrs_loss
from abcrown_plugins.training import TrainSettings, ibp_init, make_objective, train


def settings(**training):
    cfg = build_config({"training": {"epochs": 1, "eps_warmup_epochs": 0, "eps_ramp_epochs": 1, **training},
                        "data": {"batch_size": 64}})
    return TrainSettings.from_config(cfg)


class Counting:
    """A real StabilityTerm that records whether it received the objective's bounds."""

    def __init__(self):
        self.inner, self.given = StabilityTerm("nrs", 0.01), []

    def term(self, model, x, eps, bounds=None):
        self.given.append(bounds is not None)
        return self.inner.term(model, x, eps, bounds)

    def after_backward(self, model):
        pass


@pytest.mark.parametrize("method,reused", [("ibp", True), ("fgsm", False), ("standard", False)])
def test_regulariser_reuses_objective_bounds(method, reused, tiny_synthetic):
    train_set, _ = tiny_synthetic
    torch.manual_seed(0)
    model = model_for("cnn_small", train_set.info)
    before = [p.clone() for p in model.parameters()]
    reg = Counting()
    h = train(model, train_set, settings(method=method), torch.device("cpu"), regularizers=[reg, BatchNormL1(1e-4)])
    assert len(reg.given) == train_set.num_batches(64) and all(g == reused for g in reg.given)
    assert h[0]["loss"] == h[0]["loss"]  # finite
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fgsm_training_is_reproducible(tiny_synthetic):
    train_set, _ = tiny_synthetic
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = model_for("cnn_small", train_set.info)
        torch.manual_seed(123)  # global RNG state must not matter: each epoch reseeds
        train(model, train_set, settings(method="fgsm", epochs=1), torch.device("cpu"))
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA is not importable")
def test_crown_ibp_objective_trains_the_model_itself(tiny_synthetic):
    train_set, _ = tiny_synthetic
    torch.manual_seed(0)
    model = model_for("cnn_small", train_set.info)
    ibp_init(model)
    s = settings(method="crown-ibp", eps=8 / 255)
    obj = make_objective(s, 10)
    x, y = next(train_set.batches(16))
    model.train()
    half = obj(model, x, y, 4 / 255)  # k = 0.5: CROWN-IBP mixed with IBP
    assert half.bounds and all(r.lower.shape[0] == 16 for r in half.bounds)
    half.loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []  # gradients land on the model
    reg = StabilityTerm("nrs", 1.0)
    model.zero_grad()
    out = obj(model, x, y, 8 / 255)
    with_bn = [r for r in out.bounds if r.bn is not None]
    assert [r.bn for r in with_bn] == [model[2], model[5]]  # auto_LiRPA nodes mapped to the model's BatchNorms
    g_last, g_conv = torch.autograd.grad(nrs_loss(with_bn), [model[5].weight, model[1].weight],
                                         retain_graph=True, allow_unused=True)
    assert g_last is None or torch.count_nonzero(g_last) == 0  # NRS sends nothing to its gamma
    assert g_conv.abs().sum() > 0
    reg.term(model, x, 8 / 255, out.bounds).backward()
    assert model[1].weight.grad.abs().sum() > 0
    h = train(model, train_set, dataclasses.replace(s, epochs=1), torch.device("cpu"))
    assert h[0]["loss"] == h[0]["loss"]


def test_crown_ibp_without_lirpa_is_a_clear_error(monkeypatch):
    import abcrown_plugins.training.objectives as obj

    monkeypatch.setattr(obj, "lirpa_available", lambda: False)
    with pytest.raises(UserError, match="auto_LiRPA"):
        obj.make_objective(settings(method="crown-ibp"), 10)
