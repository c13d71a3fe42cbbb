import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.bounds import margin_lower_bounds
from abcrown_plugins.config import build_config
from abcrown_plugins.models import model_for
from abcrown_plugins.pruning import Mask, prune_global_magnitude
from abcrown_plugins.training import TrainSettings, ibp_init, ibp_loss, train


def settings(**training):
    cfg = build_config({"training": {"method": "ibp", "epochs": 3, "eps_warmup_epochs": 0, "eps_ramp_epochs": 1,
                                     **training}, "data": {"batch_size": 64}})
    return TrainSettings.from_config(cfg)


def fresh(train_set):
    torch.manual_seed(1)
    model = model_for("cnn_small", train_set.info)
    ibp_init(model)
    return model


def test_resume_after_kill_gives_identical_weights(tiny_synthetic, tmp_path):
    train_set, _ = tiny_synthetic
    s = settings()
    straight = fresh(train_set)
    h_straight = train(straight, train_set, s, torch.device("cpu"))

    # "killed" after 2 epochs: the state file holds epoch 2; a new process resumes from it
    state = tmp_path / "state.pt"
    first = fresh(train_set)
    train(first, train_set, settings(epochs=2), torch.device("cpu"), state_path=state, run_key="k")
    assert checkpoints.load(state)["epoch"] == 2
    resumed = fresh(train_set)
    h_resumed = train(resumed, train_set, s, torch.device("cpu"), state_path=state, run_key="k")
    assert [h["epoch"] for h in h_resumed] == [1, 2, 3]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert h_resumed[-1]["loss"] == h_straight[-1]["loss"]


def test_state_of_another_run_is_ignored(tiny_synthetic, tmp_path):
    train_set, _ = tiny_synthetic
    state = tmp_path / "state.pt"
    train(fresh(train_set), train_set, settings(epochs=1), torch.device("cpu"), state_path=state, run_key="a")
    h = train(fresh(train_set), train_set, settings(epochs=1), torch.device("cpu"), state_path=state, run_key="b")
    assert len(h) == 1 and h[0]["epoch"] == 1


def test_ibp_training_lowers_the_robust_loss(tiny_synthetic):
    train_set, _ = tiny_synthetic
    model = fresh(train_set)
    x, y = next(train_set.batches(128))
    model.eval()
    before = ibp_loss(model, x, y, 2 / 255, 10)[0].item()
    train(model, train_set, settings(epochs=4), torch.device("cpu"))
    model.eval()
    after = ibp_loss(model, x, y, 2 / 255, 10)[0].item()
    assert after < before


def test_masked_training_keeps_pruned_weights_zero(tiny_synthetic):
    train_set, _ = tiny_synthetic
    model = fresh(train_set)
    mask = prune_global_magnitude(model, Mask.ones_like(model), 0.5)
    train(model, train_set, settings(epochs=1, method="standard"), torch.device("cpu"), mask=mask)
    params = dict(model.named_parameters())
    for k, m in mask.items():
        assert (params[k][~m] == 0).all()
        assert (params[k][m] != 0).float().mean() > 0.99


def test_margin_bounds_use_clipped_box(tiny_synthetic):
    _, test_set = tiny_synthetic
    model = fresh(test_set).eval()
    x, y = next(test_set.batches(8))
    big = margin_lower_bounds(model, x, y, 10.0, 10)       # box = whole [0,1] cube
    whole = margin_lower_bounds(model, torch.full_like(x, 0.5), y, 0.5, 10)
    assert torch.allclose(big.lower, whole.lower, atol=1e-4)


@pytest.mark.parametrize("method", ["fgsm", "ibp", "standard"])
def test_backward_step_gives_the_gradient_of_objective_plus_terms(method, tiny_synthetic):
    """Backpropagating the objective before the regulariser's own pass changes no gradient."""
    from abcrown_plugins.regularizers import BatchNormL1, StabilityTerm
    from abcrown_plugins.training import backward_step, make_objective

    train_set, _ = tiny_synthetic
    s = settings(method=method)
    model = fresh(train_set).train()
    x, y = next(train_set.batches(32))
    objective = make_objective(s, 10)
    regs = [StabilityTerm("nrs", 0.5), BatchNormL1(0.0)]

    torch.manual_seed(3)
    out = objective(model, x, y, 4 / 255)
    joint = out.loss + sum(r.term(model, x, 4 / 255, out.bounds) for r in regs)
    joint.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    torch.manual_seed(3)
    loss, logits = backward_step(model, objective, regs, x, y, 4 / 255, 4 / 255)
    assert torch.allclose(loss, joint.detach(), atol=1e-6) and not loss.requires_grad
    assert logits.shape == (32, 10)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, want[n], rtol=1e-5, atol=1e-7), n
