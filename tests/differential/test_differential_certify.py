"""Smoothing through the engine: counts and certificates identical to the dense certifier's."""

from __future__ import annotations

import pytest
import torch

import model_zoo
from abcrown_plugins.differential import DifferentialEngine, random_finetuned
from abcrown_plugins.differential.certify import (certify_from_traces, multitask_certify, multitask_counts,
                                                  record_certify_traces, record_trace, trace_counts)
from abcrown_plugins.differential.delta import calibrate_batchnorm, center_classifier
from abcrown_plugins.errors import UserError
from abcrown_plugins.runtime import set_progress
from abcrown_plugins.smoothing.certify import certify, noise_batches, sample_counts
from tests.conftest import randomize_batchnorm

SIGMA = 0.25


@pytest.fixture(autouse=True)
def _quiet():
    set_progress(False)
    yield
    set_progress(True)


def _setup(arch: str, specs, seed: int = 1):
    """A base with random BN affine parameters and statistics calibrated on noisy copies of x, and one
    fine-tuned network per (pattern, density, allocation, classes) with centred classifier, so that
    predictions vary under noise (the counts then test something)."""
    g = torch.Generator().manual_seed(seed)
    base = model_zoo.build_model(arch, in_channels=3, input_size=32, num_classes=10)
    randomize_batchnorm(base, g)
    x = torch.rand(3, 32, 32, generator=g)
    calib = next(noise_batches(x, 256, SIGMA, 256, torch.Generator().manual_seed(99)))
    calibrate_batchnorm(base, calib)
    tasks = []
    for pattern, density, allocation, classes in specs:
        tuned, _ = random_finetuned(base, pattern, density, allocation=allocation, num_classes=classes,
                                    change_bn=True, scale=0.3, generator=g)
        center_classifier(tuned, calib)
        tasks.append(tuned)
    return base.eval(), tasks, x


SPECS = [("structured", 0.08, "late", 10), ("unstructured", 0.04, "uniform", 10),
         ("groupwise", 0.16, "uniform", 5), ("structured", 0.02, "uniform", 10)]


@pytest.mark.parametrize("arch", ["cnn_small", "resnet_small"])
def test_multitask_counts_equal_separate_dense_runs(arch):
    base, tasks, x = _setup(arch, SPECS)
    eng = DifferentialEngine(base, tasks, break_even=1.0)  # take channel-sparse paths wherever possible
    assert not all(p.exact for p in eng.plans(x.shape, "live"))  # ... so the near-tie guard is exercised
    num, bs = 3000, 250
    shared = multitask_counts(eng, x, num, SIGMA, bs, torch.Generator().manual_seed(5))
    for t, task in enumerate(tasks):
        dense = sample_counts(task, x, num, SIGMA, task[-1].out_features, bs, torch.Generator().manual_seed(5))
        assert int((dense > 0).sum()) >= 3  # predictions vary: the comparison can fail
        assert torch.equal(shared[t], dense), t
        assert int(shared[t].sum()) == num


def test_multitask_certify_equals_dense_certify():
    base, tasks, x = _setup("cnn_small", SPECS[:3], seed=2)
    eng = DifferentialEngine(base, tasks)
    results = multitask_certify(eng, x, 100, 1500, 0.001, SIGMA, 200, torch.Generator().manual_seed(11))
    for task, r in zip(tasks, results):
        d = certify(task, x, 100, 1500, 0.001, SIGMA, task[-1].out_features, 200, torch.Generator().manual_seed(11))
        assert (r.prediction, r.radius, r.pA_lower, r.counts) == (d.prediction, d.radius, d.pA_lower, d.counts)
    # single-task forward for the project's certifier gives the same certificate as well
    d0 = certify(tasks[0], x, 100, 1500, 0.001, SIGMA, 10, 200, torch.Generator().manual_seed(11))
    e0 = certify(eng.task_forward(0), x, 100, 1500, 0.001, SIGMA, 10, 200, torch.Generator().manual_seed(11))
    assert (e0.prediction, e0.radius, e0.counts) == (d0.prediction, d0.radius, d0.counts)


def test_base_trace_replay_equals_dense():
    base, tasks, x = _setup("resnet_small", SPECS[:2] + [("structured", 0.08, "late", 4)], seed=3)
    eng = DifferentialEngine(base, tasks)
    num, bs = 1200, 200
    trace = record_trace(eng, x, num, SIGMA, bs, torch.Generator().manual_seed(6))
    assert trace.nbytes > 0 and len(trace.batches) == 6
    replayed = trace_counts(eng, trace)
    for t, task in enumerate(tasks):
        dense = sample_counts(task, x, num, SIGMA, task[-1].out_features, bs, torch.Generator().manual_seed(6))
        assert torch.equal(replayed[t], dense)
    # the trace's regenerated noise is the draw it was recorded from
    again = torch.cat(list(trace.noise()))
    assert torch.equal(again, torch.cat(list(noise_batches(x, num, SIGMA, bs, torch.Generator().manual_seed(6)))))
    sel, est = record_certify_traces(eng, x, 50, 600, SIGMA, bs, torch.Generator().manual_seed(8))
    from_traces = certify_from_traces(eng, sel, est, 0.01)
    for task, r in zip(tasks, from_traces):
        d = certify(task, x, 50, 600, 0.01, SIGMA, task[-1].out_features, bs, torch.Generator().manual_seed(8))
        assert (r.prediction, r.radius, r.counts) == (d.prediction, d.radius, d.counts)


def test_trace_recorded_for_other_tasks_is_refused():
    base, tasks, x = _setup("cnn_small", [("structured", 0.08, "late", 10), ("structured", 0.05, "uniform", 10)])
    eng = DifferentialEngine(base, tasks)
    trace = record_trace(eng, x, 100, SIGMA, 50, torch.Generator().manual_seed(1), tasks=[0])
    assert torch.equal(trace_counts(eng, trace, [0])[0],
                       sample_counts(tasks[0], x, 100, SIGMA, 10, 50, torch.Generator().manual_seed(1)))
    with pytest.raises(UserError, match="not recorded"):
        trace_counts(eng, trace, [1])
    with pytest.raises(UserError, match="out of range"):
        multitask_counts(eng, x, 10, SIGMA, 10, torch.Generator(), tasks=[5])


def test_non_finite_logits_are_refused_by_every_counting_path():
    base, (tuned,), x = _setup("cnn_small", SPECS[:1])
    with torch.no_grad():
        list(tuned.parameters())[-1][0] = float("nan")  # the classifier's first bias: NaN logits for class 0
    engine = DifferentialEngine(base, [tuned])
    with pytest.raises(UserError, match="not finite"):
        multitask_counts(engine, x, 16, SIGMA, 8, torch.Generator().manual_seed(0))
    with pytest.raises(UserError, match="not finite"):
        multitask_certify(engine, x, 8, 16, 0.001, SIGMA, 8, torch.Generator().manual_seed(0))
    trace = record_trace(engine, x, 16, SIGMA, 8, torch.Generator().manual_seed(0))
    with pytest.raises(UserError, match="not finite"):
        trace_counts(engine, trace)
    with pytest.raises(UserError, match="not finite"):
        certify(engine.task_forward(0), x, 8, 16, 0.001, SIGMA, 10, 8, torch.Generator().manual_seed(0))
