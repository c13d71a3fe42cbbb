"""FGSM+GradAlign and PGD: points stay in the clipped eps-ball, counterexamples are re-checked."""

import torch

from abcrown_plugins.attacks import fgsm_gradalign_loss, fgsm_perturb, grad_align, pgd_accuracy, pgd_attack
from abcrown_plugins.models import model_for
from abcrown_plugins.training import TrainSettings, train
from abcrown_plugins.config import build_config
from abcrown_plugins.verification import evaluate


def in_ball(adv, x, eps):
    return bool(((adv >= (x - eps).clamp(0, 1) - 1e-7) & (adv <= (x + eps).clamp(0, 1) + 1e-7)).all())


def test_fgsm_stays_in_ball_and_gradalign_has_gradient(tiny_synthetic):
    train_set, _ = tiny_synthetic
    model = model_for("cnn_small", train_set.info)
    x, y = next(train_set.batches(16))
    for init in ("random", "zero"):
        adv = fgsm_perturb(model, x, y, 8 / 255, 10 / 255, init)
        assert in_ball(adv, x, 8 / 255) and not torch.equal(adv, x)
    ga = grad_align(model, x, y, 8 / 255)
    assert 0 <= float(ga) <= 2
    ga.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    loss, logits = fgsm_gradalign_loss(model, x, y, 0.0, 0.0, "random", 0.2)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(model(x), y))


def test_pgd_points_are_rechecked_and_bounded_by_verification(tiny_synthetic):
    train_set, test_set = tiny_synthetic
    torch.manual_seed(0)
    model = model_for("cnn_small", train_set.info)
    cfg = build_config({"training": {"method": "ibp", "epochs": 2, "eps": 4 / 255, "eps_warmup_epochs": 0,
                                     "eps_ramp_epochs": 1}, "data": {"batch_size": 64}})
    train(model, train_set, TrainSettings.from_config(cfg), torch.device("cpu"))
    model.eval()
    x, y = next(test_set.batches(64))
    eps = 8 / 255
    adv, broken = pgd_attack(model, x, y, eps, steps=5, generator=torch.Generator().manual_seed(0))
    assert in_ball(adv, x, eps)
    with torch.no_grad():
        assert bool((model(adv).argmax(1)[broken] != y[broken]).all())
    res = pgd_accuracy(model, test_set, eps, steps=5, batch_size=64, seed=3)
    again = pgd_accuracy(model, test_set, eps, steps=5, batch_size=64, seed=3)
    assert res.pgd_acc == again.pgd_acc  # seeded
    ver = evaluate(model, test_set, eps, "ibp", 64)
    assert ver.verified_acc <= res.pgd_acc <= res.std_acc
    assert res.std_acc == ver.std_acc
    assert pgd_accuracy(model, test_set, 0.0, steps=5).pgd_acc == ver.std_acc
