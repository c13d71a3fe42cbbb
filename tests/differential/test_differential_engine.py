"""The differential engine equals the dense fine-tuned networks (logits within 1e-4, identical argmaxes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import model_zoo
from abcrown_plugins.differential import DifferentialEngine, module_changes, random_finetuned
from abcrown_plugins.differential.delta import calibrate_batchnorm, center_classifier
from abcrown_plugins.errors import UserError
from tests.conftest import randomize_batchnorm

PATTERNS = ("unstructured", "structured", "groupwise")


def _base(arch: str, seed: int = 1, channels: int = 3, size: int = 32) -> nn.Module:
    model = model_zoo.build_model(arch, in_channels=channels, input_size=size, num_classes=10)
    randomize_batchnorm(model, torch.Generator().manual_seed(seed))
    return model.eval()


def _trace_forward(eng: DifferentialEngine, x: torch.Tensor, tasks=None) -> list[torch.Tensor]:
    """The engine as a base trace drives it: base activations given, sparse paths wherever they pay."""
    return eng.forward_from(eng.base_activations(x, tasks, mode="trace"), x.shape[1:], tasks, mode="trace")


def _tasks(base, pattern, density, allocation, n=2, seed=2, num_classes=10):
    g = torch.Generator().manual_seed(seed)
    return [random_finetuned(base, pattern, density, allocation=allocation, change_bn=True, generator=g,
                             num_classes=num_classes)[0] for _ in range(n)]


@pytest.mark.parametrize("arch", ["cnn_small", "resnet_small", "resnet18_nr"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_engine_equals_dense_random_deltas(arch, pattern):
    base = _base(arch)
    x = torch.rand(48, 3, 32, 32)
    inexact = 0
    for allocation in ("uniform", "late"):
        for density in (0.02, 0.08, 0.64):
            tasks = _tasks(base, pattern, density, allocation)
            raw = DifferentialEngine(base, tasks, tie_tol=-1.0)  # guard off: the engine's own values
            guarded = DifferentialEngine(base, tasks)
            inexact += sum(not p.exact for p in raw.plans((3, 32, 32), "trace"))
            outputs = zip(_trace_forward(raw, x), _trace_forward(guarded, x), raw.forward(x), guarded.forward(x))
            for t, (r, g, r_live, g_live) in enumerate(outputs):
                dense = tasks[t](x)
                assert r.shape == dense.shape
                assert (r - dense).abs().max().item() <= 1e-4, (allocation, density)
                assert (r_live - dense).abs().max().item() <= 1e-4, (allocation, density)
                assert torch.equal(g.argmax(1), dense.argmax(1)), (allocation, density)
                assert torch.equal(g_live.argmax(1), dense.argmax(1)), (allocation, density)
    if pattern == "structured" or (pattern == "groupwise" and arch == "cnn_small"):
        assert inexact > 0  # channel-sparse paths (not bitwise exact) were exercised


def test_cnn_7layer_small_batch_equals_dense():
    base = _base("cnn_7layer")
    x = torch.rand(8, 3, 32, 32)
    for pattern in PATTERNS:
        tasks = _tasks(base, pattern, 0.08, "late") + _tasks(base, pattern, 0.04, "uniform", n=1)
        eng = DifferentialEngine(base, tasks, tie_tol=-1.0)
        for out, task in zip(_trace_forward(eng, x), tasks):
            assert (out - task(x)).abs().max().item() <= 1e-4
        plans = eng.plans((3, 32, 32))
        assert plans[0].first_changed is not None and plans[0].shared_fraction > 0.5  # late: long shared prefix
        assert plans[2].shared_fraction < 0.2  # uniform: the first conv changes


def test_grayscale_input_and_classifier_only_change():
    base = _base("cnn_small", channels=1, size=28)
    g = torch.Generator().manual_seed(3)
    tuned, achieved = random_finetuned(base, "structured", 0.0, num_classes=3, generator=g)
    assert achieved == 0.0
    changes = module_changes(base, tuned)
    assert list(changes) == [str(len(base) - 1)] and changes[str(len(base) - 1)].kind == "replaced"
    eng = DifferentialEngine(base, [tuned, base])
    x = torch.rand(16, 1, 28, 28)
    out = eng.forward(x)
    assert out[0].shape == (16, 3) and torch.equal(out[0], tuned(x))  # shared up to the new classifier
    assert torch.equal(out[1], base(x))  # an unchanged task is the base itself
    assert eng.num_classes(0, (1, 28, 28)) == 3 and eng.num_classes(1, (1, 28, 28)) == 10


@pytest.mark.parametrize("arch", ["cnn_small", "resnet_small"])
def test_dense_switch_is_bitwise_and_never_switch_is_close(arch):
    base = _base(arch)
    x = torch.rand(32, 3, 32, 32)
    tasks = _tasks(base, "structured", 0.64, "uniform") + _tasks(base, "structured", 0.04, "late", n=1)
    always_dense = DifferentialEngine(base, tasks, break_even=0.0)
    never_dense = DifferentialEngine(base, tasks, break_even=1.0, tie_tol=-1.0)
    assert all(p.exact for p in always_dense.plans((3, 32, 32), "trace"))
    assert not any(p.exact for p in never_dense.plans((3, 32, 32), "trace"))
    for t, task in enumerate(tasks):
        dense = task(x)
        # Above break-even every changed module runs densely from the shared prefix: bit for bit.
        assert torch.equal(_trace_forward(always_dense, x, [t])[0], dense)
        assert torch.equal(always_dense.forward(x, [t])[0], dense)
        assert (_trace_forward(never_dense, x, [t])[0] - dense).abs().max().item() <= 1e-4
    # live, one task: base activations past the first change would cost extra, so it runs densely
    for t in range(len(tasks)):
        assert DifferentialEngine(base, tasks[t:t + 1]).plans((3, 32, 32), "live")[0].exact


def test_structured_delta_rows_are_exactly_the_changed_channels():
    base = _base("cnn_small")
    tuned, achieved = random_finetuned(base, "structured", 0.25, generator=torch.Generator().manual_seed(4))
    assert 0.15 < achieved < 0.35
    changes = module_changes(base, tuned)
    for path, ch in changes.items():
        m = dict(tuned.named_modules())[path]
        if isinstance(m, nn.Conv2d):
            diff = (m.weight != dict(base.named_modules())[path].weight).flatten(1).any(1)
            assert torch.equal(ch.rows, diff.nonzero().flatten())
            assert 0 < ch.num_rows < m.out_channels
    assert module_changes(base, base) == {}


def test_near_tie_guard_falls_back_to_the_dense_network():
    base = _base("cnn_small")
    x = torch.rand(64, 3, 32, 32)
    calibrate_batchnorm(base, x)
    tuned = _tasks(base, "structured", 0.08, "late", n=1)[0]
    center_classifier(tuned, x)
    with torch.no_grad():  # classes 0 and 1 tie exactly: every sample where they lead is a tie
        tuned[-1].weight[1] = tuned[-1].weight[0]
        tuned[-1].bias[1] = tuned[-1].bias[0]
    eng = DifferentialEngine(base, [tuned])
    assert not eng.plans((3, 32, 32), "trace")[0].exact
    dense = tuned(x)
    assert (dense[:, :2].max(1).values >= dense.max(1).values).any()  # some sample is a tie at the top
    out = _trace_forward(eng, x)[0]
    assert eng.stats.fallbacks == [1]
    assert torch.equal(out, dense)  # the fallback is the dense network, bit for bit


def test_bad_inputs_are_user_errors():
    base = _base("cnn_small")
    tuned = _tasks(base, "structured", 0.1, "uniform", n=1)[0]
    with pytest.raises(UserError, match="training mode"):
        DifferentialEngine(base, [tuned.train()])
    with pytest.raises(UserError, match="nn.Sequential"):
        DifferentialEngine(nn.Linear(2, 2).eval(), [nn.Linear(2, 2).eval()])
    with pytest.raises(UserError, match="same architecture"):
        DifferentialEngine(base, [_base("resnet_small")])
    with pytest.raises(UserError, match="valid: unstructured, structured, groupwise"):
        random_finetuned(base, "channel", 0.1)
    with pytest.raises(UserError, match="at least one"):
        DifferentialEngine(base, [])


def test_batchnorm_only_change():
    """A BatchNorm changed without its conv (groupwise masks can do that): channel subset or dense."""
    import copy

    base = _base("resnet_small")
    tuned = copy.deepcopy(base).eval()
    with torch.no_grad():
        tuned[2].running_mean[3] += 0.5  # the stem's BatchNorm, one channel
        tuned[4].bn2.weight[[1, 7]] *= -1  # inside the second residual block
    changes = module_changes(base, tuned)
    assert set(changes) == {"2", "4.bn2"} and changes["2"].rows.tolist() == [3]
    x = torch.rand(16, 3, 32, 32)
    eng = DifferentialEngine(base, [tuned], tie_tol=-1.0)
    assert not eng.plans((3, 32, 32), "trace")[0].exact  # the trace path uses the channel subset
    assert eng.plans((3, 32, 32), "live")[0].exact  # alone and live: dense from the change on
    assert (_trace_forward(eng, x)[0] - tuned(x)).abs().max().item() <= 1e-4
    assert torch.equal(eng.forward(x)[0], tuned(x))


def test_calls_leave_no_state_behind():
    """Per-call facts (break-even, exactness) are passed along, not kept: a call's result does not
    depend on the calls before it, and calls add no attributes to the engine."""
    base = _base("cnn_small")
    tasks = _tasks(base, "structured", 0.08, "late")
    x = torch.rand(8, 3, 32, 32)
    eng = DifferentialEngine(base, tasks, tie_tol=-1.0)
    attrs = set(vars(eng))
    first = _trace_forward(eng, x, [0])[0]
    assert not eng.plans((3, 32, 32), "trace")[0].exact  # the trace path takes channel-sparse steps
    eng.forward(x, [1])  # live, one task: another break-even and exactness in between
    assert torch.equal(_trace_forward(eng, x, [0])[0], first)
    assert set(vars(eng)) == attrs
