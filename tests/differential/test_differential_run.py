"""Dense and differential certification side by side: identical certificates, resumable files, time saved."""

from __future__ import annotations

import math

import pytest
import torch

import model_zoo
from abcrown_plugins.data import load_dataset
from abcrown_plugins.differential import (DifferentialEngine, ExactnessError, certify_compared, compare_certify,
                                          random_finetuned, read_timing, time_saved, traced_certify)
from abcrown_plugins.differential.delta import calibrate_batchnorm, center_classifier
from abcrown_plugins.errors import UserError
from abcrown_plugins.runtime import set_progress
from abcrown_plugins.smoothing.certify import certify, noise_batches
from abcrown_plugins.smoothing.run import SmoothingSettings, certify_dataset, example_generator, read_tsv
from tests.conftest import randomize_batchnorm

SIGMA = 0.25


@pytest.fixture(autouse=True)
def _quiet():
    set_progress(False)
    yield
    set_progress(True)


@pytest.fixture(scope="module")
def images():
    return load_dataset("synthetic", "test", num=24)


def _networks(x: torch.Tensor, specs, seed: int = 4):
    """A calibrated cnn_small base and fine-tuned networks whose predictions vary under noise around ``x``."""
    g = torch.Generator().manual_seed(seed)
    base = model_zoo.build_model("cnn_small", in_channels=3, input_size=32, num_classes=10)
    randomize_batchnorm(base, g)
    calib = next(noise_batches(x, 256, SIGMA, 256, torch.Generator().manual_seed(99)))
    calibrate_batchnorm(base, calib)
    tasks = []
    for pattern, density, allocation, classes in specs:
        tuned, _ = random_finetuned(base, pattern, density, allocation=allocation, num_classes=classes,
                                    change_bn=True, scale=0.3, generator=g)
        center_classifier(tuned, calib)
        tasks.append(tuned.eval())
    return base.eval(), tasks


SPECS = [("structured", 0.08, "late", 10), ("unstructured", 0.04, "uniform", 10), ("groupwise", 0.16, "late", 10)]


def test_compare_certify_returns_the_dense_certificates_with_every_accounting_timed(images):
    x, _ = images[0]
    base, tasks = _networks(x, SPECS)
    engine = DifferentialEngine(base, tasks)
    for order in range(4):  # every accounting first once
        c = compare_certify(engine, x, 20, 400, 0.01, SIGMA, 100, lambda: torch.Generator().manual_seed(3), order)
        for t, task in enumerate(tasks):
            d = certify(task, x, 20, 400, 0.01, SIGMA, 10, 100, torch.Generator().manual_seed(3))
            assert (c.results[t].prediction, c.results[t].radius, c.results[t].counts) == \
                (d.prediction, d.radius, d.counts)
        assert sum(int(v > 0) for v in c.results[0].counts) >= 2  # predictions vary: the check can fail
        assert all(s > 0 for s in c.dense_s + c.live_s + c.trace_s) and c.record_s > 0 and c.multitask_s > 0
    one = compare_certify(DifferentialEngine(base, tasks[:1]), x, 20, 400, 0.01, SIGMA, 100,
                          lambda: torch.Generator().manual_seed(3))
    assert one.multitask_s is None and one.results[0].counts == c.results[0].counts
    # the streamed trace gives the dense certificates and charges the replay only
    res, record_s, replay_s = traced_certify(engine, x, 20, 400, 0.01, SIGMA, 100, torch.Generator().manual_seed(3))
    assert [r.counts for r in res] == [r.counts for r in c.results] and record_s > 0
    assert [r.time_s for r in res] == replay_s


def test_a_certificate_that_differs_from_the_dense_one_is_an_error(images):
    x, _ = images[1]
    base, tasks = _networks(x, SPECS[:1])
    engine = DifferentialEngine(base, tasks)  # the engine now believes the first conv is shared ...
    with torch.no_grad():
        tasks[0][1].weight.mul_(-1.0)  # ... but the dense network changes it (a fault the engine cannot see)
    with pytest.raises(ExactnessError, match="differs|dense certifier"):
        compare_certify(engine, x, 20, 400, 0.01, SIGMA, 100, lambda: torch.Generator().manual_seed(5))


def test_certify_compared_writes_dense_rows_resumes_and_sums_time_saved(images, tmp_path):
    x, _ = images[0]
    base, tasks = _networks(x, SPECS[:2])
    settings = SmoothingSettings(sigma=SIGMA, n0=10, n=200, alpha=0.01, batch_size=100, num_examples=5, skip=2)
    dirs = [tmp_path / "a", tmp_path / "b"]
    rows, timing = certify_compared(base, tasks, [images, images], settings, dirs, tmp_path / "timing.tsv",
                                    seed=7, tags=["a", "b"])
    assert [r["idx"] for r in rows[0]] == [0, 2, 4, 6, 8] and len(timing) == 10
    for t, task in enumerate(tasks):  # the rows are the dense certifier's, example by example
        dense = certify_dataset(task, images, settings, tmp_path / f"dense{t}", seed=7)
        assert [(r["idx"], r["label"], r["predict"], r["radius"], r["correct"]) for r in rows[t]] == \
            [(r["idx"], r["label"], r["predict"], r["radius"], r["correct"]) for r in dense]
        _, on_disk = read_tsv(dirs[t] / "certify.tsv")
        assert [r["radius"] for r in on_disk] == [r["radius"] for r in rows[t]]
    x4, _ = images[4]
    d = certify(tasks[1], x4, 10, 200, 0.01, SIGMA, 10, 100, example_generator(7, 4))
    assert next(r for r in rows[1] if r["idx"] == 4)["predict"] == d.prediction
    # time saved: 1 - engine seconds / dense seconds, summed over the examples, per accounting
    saved = time_saved(timing, 2)
    dense0 = sum(r["dense_s"] for r in timing if r["task"] == 0)
    assert saved.examples == 5 and saved.dense_s[0] == pytest.approx(dense0)
    assert saved.live[0] == pytest.approx(1 - sum(r["live_s"] for r in timing if r["task"] == 0) / dense0)
    assert saved.trace[1] == pytest.approx(1 - saved.trace_s[1] / saved.dense_s[1])
    multi = sum({r["idx"]: r["multitask_s"] for r in timing}.values())
    assert saved.multitask == pytest.approx(1 - multi / (saved.dense_s[0] + saved.dense_s[1]))
    assert all(math.isfinite(v) and v < 1 for v in saved.live + saved.trace + [saved.multitask])
    # killed after three examples: the resumed run redoes the others only and writes the same rows
    header, old = read_timing(tmp_path / "timing.tsv")
    lines = (tmp_path / "timing.tsv").read_text().splitlines()
    (tmp_path / "timing.tsv").write_text("\n".join(lines[:2 + 6]) + "\n")
    rows2, timing2 = certify_compared(base, tasks, [images, images], settings, dirs, tmp_path / "timing.tsv",
                                      seed=7, tags=["a", "b"])
    assert rows2 == [[{**r, "time": r2["time"]} for r, r2 in zip(rows[t], rows2[t])] for t in range(2)]
    assert timing2[:6] == old[:6] and {r["idx"] for r in timing2} == {0, 2, 4, 6, 8}
    # other settings or other networks in the same files are refused, not mixed
    with pytest.raises(UserError, match="other settings"):
        certify_compared(base, tasks, [images, images], settings, dirs, tmp_path / "timing.tsv", seed=7,
                         tags=["a", "c"])


def test_networks_on_different_images_are_not_certified_together(images, tmp_path):
    x, _ = images[0]
    base, tasks = _networks(x, SPECS[:2])
    other = load_dataset("synthetic", "train", num=24)
    settings = SmoothingSettings(sigma=SIGMA, n0=4, n=16, alpha=0.01, batch_size=16, num_examples=2)
    with pytest.raises(UserError, match="other images"):
        certify_compared(base, tasks, [images, other], settings, [tmp_path / "a", tmp_path / "b"],
                         tmp_path / "t.tsv")
    with pytest.raises(UserError, match="different sizes"):
        certify_compared(base, tasks, [images, load_dataset("synthetic", "test", num=8)], settings,
                         [tmp_path / "c", tmp_path / "d"], tmp_path / "u.tsv")
