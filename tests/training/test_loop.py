"""The one training loop: order of step and hooks, averaged rows, hook state saved and resumed, reseeding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from abcrown_plugins import checkpoints
from abcrown_plugins.errors import UserError
from abcrown_plugins.training.loop import BatchStep, LoopHook, LoopSettings, epoch_seed, run_epochs

X = torch.rand(10, 4, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1] * 5)


def batches(seed: int):
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(X), 4):
        yield X[order[start:start + 4]], Y[order[start:start + 4]]


class Step(BatchStep):
    """Cross-entropy; records the calls and, with ``draw``, one draw of torch's global generator."""

    columns = ("loss", "ones")

    def __init__(self, log: list, draw: bool = False):
        self.log, self.draw, self.draws = log, draw, []

    def begin_epoch(self, model, epoch):
        self.log.append(("begin", epoch, model.training))

    def __call__(self, model, x, y, zero_grad, epoch, step):
        if self.draw:
            self.draws.append(torch.rand(()).item())
        loss = F.cross_entropy(model(x), y)
        zero_grad()
        loss.backward()
        self.log.append(("step", epoch, step))
        return {"loss": loss.item() * x.shape[0], "ones": float(x.shape[0])}

    def epoch_row(self, epoch):
        return {"tag": f"e{epoch}"}


class Hook(LoopHook):
    """Counts updates in its own resumable state and records where it ran."""

    def __init__(self, log: list):
        self.log, self.count, self.resumed_from = log, 0, "unset"

    def resume(self, model, state):
        self.resumed_from = None if state is None else state["hook_count"]
        self.count = 0 if state is None else state["hook_count"]

    def after_backward(self, model, step):
        assert all(p.grad is not None for p in model.parameters())
        self.log.append(("after_backward", step))

    def after_step(self, model):
        self.count += 1
        self.log.append(("after_step",))

    def extra_state(self):
        return {"hook_count": self.count}


def fresh() -> nn.Module:
    torch.manual_seed(3)
    return nn.Linear(4, 2)


def run(model, epochs, log, state_path=None, draw=False, reseed=False, hooks=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = Step(log, draw)
    hooks = [Hook(log)] if hooks is None else hooks
    settings = LoopSettings(epochs, 3, seed=2, grad_clip=1.0, reseed_torch=reseed)
    history = run_epochs(model, optimizer, step, batches, settings, "cpu", hooks, state_path, "key", "t")
    return history, step, hooks


def test_hooks_run_after_backward_and_after_step_with_the_global_step():
    log: list = []
    history, _, (hook,) = run(fresh(), 2, log)
    assert log[:5] == [("begin", 0, True), ("step", 0, 0), ("after_backward", 0), ("after_step",), ("step", 0, 1)]
    assert [e[1] for e in log if e[0] == "after_backward"] == [0, 1, 2, 3, 4, 5]  # epoch * steps_per_epoch + step
    assert hook.count == 6 and hook.resumed_from is None
    assert [list(r) for r in history] == [["epoch", "loss", "ones", "tag", "time_s"]] * 2
    assert [r["epoch"] for r in history] == [1, 2] and [r["tag"] for r in history] == ["e0", "e1"]
    assert all(r["ones"] == 1.0 for r in history)  # per-batch sums divided by the examples of the epoch
    assert epoch_seed(2, 1) == 2 * 100003 + 1


def test_resume_hands_the_hook_state_back_and_matches_an_uninterrupted_run(tmp_path):
    straight = fresh()
    h_straight, _, _ = run(straight, 3, [], draw=True, reseed=True)
    state = tmp_path / "state.pt"
    first = fresh()
    run(first, 2, [], state, draw=True, reseed=True)
    assert checkpoints.load(state)["hook_count"] == 6
    resumed = fresh()
    h_resumed, step, (hook,) = run(resumed, 3, [], state, draw=True, reseed=True)
    assert hook.resumed_from == 6 and hook.count == 9
    assert len(step.draws) == 3  # only the last epoch ran
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert [r["loss"] for r in h_resumed] == [r["loss"] for r in h_straight]


def test_reseeding_makes_each_epoch_draw_from_seed_and_epoch_only():
    def draws(global_seed: int, reseed: bool) -> list[float]:
        model = fresh()
        torch.manual_seed(global_seed)
        return run(model, 1, [], draw=True, reseed=reseed)[1].draws

    assert draws(123, True) == draws(124, True)
    assert draws(123, False) != draws(124, False)  # without reseeding the global generator runs on


class Poison(LoopHook):
    """From ``at_step`` on, after each optimiser step, sets one weight to ``value`` (a diverging run)."""

    def __init__(self, at_step: int, value: float):
        self.at_step, self.value, self.steps = at_step, value, 0

    def after_step(self, model):
        if self.steps >= self.at_step:
            with torch.no_grad():
                model.weight[0, 0] = self.value
        self.steps += 1


@pytest.mark.parametrize("value,what", [(float("nan"), "loss is nan"), (float("inf"), "loss is")])
def test_diverged_loss_stops_training_and_keeps_the_last_good_state(tmp_path, value, what):
    state = tmp_path / "state.pt"
    good = fresh()
    run(good, 1, [], state)  # epoch 1 completes and is saved
    saved = checkpoints.load(state)
    ends: list = []
    model = fresh()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError) as e:
        run_epochs(model, optimizer, Step([]), batches, LoopSettings(3, 3, seed=2), "cpu", [Poison(1, value)],
                   state, "key", "t", on_epoch_end=lambda epoch, m: ends.append(epoch))
    msg = str(e.value)
    assert "diverged in epoch 2" in msg and what in msg and "\n" not in msg
    after = checkpoints.load(state)
    assert after["epoch"] == 1 and ends == []
    assert all(torch.equal(after["model"][k], saved["model"][k]) for k in saved["model"])


def test_non_finite_weight_with_finite_loss_is_caught_before_the_state_is_written(tmp_path):
    class Last(Poison):  # poisons only after the epoch's last step: every loss of the epoch stays finite
        def after_step(self, model):
            self.steps += 1
            if self.steps == self.at_step:
                with torch.no_grad():
                    model.bias[1] = self.value

    state = tmp_path / "state.pt"
    model = fresh()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match=r"after epoch 2 has non-finite values \(NaN or inf\) in 'bias'"):
        run_epochs(model, optimizer, Step([]), batches, LoopSettings(3, 3, seed=2), "cpu", [Last(6, float("nan"))],
                   state, "key", "t")
    assert checkpoints.load(state)["epoch"] == 1
