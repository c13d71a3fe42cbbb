"""Certifying a data set: resumable TSV, certified-accuracy table/plot, the certify CLI, Gaussian augmentation."""

from __future__ import annotations

import json

import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.cli import main
from abcrown_plugins.errors import UserError
from abcrown_plugins.models import model_for, model_meta
from abcrown_plugins.smoothing import certify
from abcrown_plugins.smoothing.run import (
    SmoothingSettings,
    certified_accuracy,
    certify_dataset,
    example_indices,
    read_tsv,
    write_report,
)

SETTINGS = SmoothingSettings(sigma=0.25, n0=8, n=64, alpha=0.01, batch_size=32, num_examples=6, skip=2,
                             radii=(0.0, 0.1, 0.25))


def _model(dataset):
    torch.manual_seed(0)
    return model_for("cnn_small", dataset.info).eval()


def test_certified_accuracy_counts_correct_rows_at_radius():
    rows = [{"correct": 1, "radius": 0.3}, {"correct": 1, "radius": 0.1}, {"correct": 0, "radius": 0.0},
            {"correct": 1, "radius": 0.0}]
    assert certified_accuracy(rows, [0.0, 0.1, 0.2, 0.5]) == [0.75, 0.5, 0.25, 0.0]
    assert example_indices(10, 3, None) == [0, 3, 6, 9] and example_indices(10, 3, 2) == [0, 3]


def test_certify_dataset_is_resumable_and_matches_the_certifier(tiny_synthetic, tmp_path):
    _, test = tiny_synthetic
    model = _model(test)
    full = certify_dataset(model, test, SETTINGS, tmp_path / "a", seed=7, tag="t")
    assert [r["idx"] for r in full] == [0, 2, 4, 6, 8, 10]
    # interrupted after 3 examples (simulated by a TSV holding only them), then resumed
    header, rows = read_tsv(tmp_path / "a" / "certify.tsv")
    (tmp_path / "b").mkdir()
    lines = (tmp_path / "a" / "certify.tsv").read_text().splitlines()
    (tmp_path / "b" / "certify.tsv").write_text("\n".join(lines[:5]) + "\n")
    resumed = certify_dataset(model, test, SETTINGS, tmp_path / "b", seed=7, tag="t")
    assert [(r["idx"], r["predict"], r["radius"]) for r in resumed] == [(r["idx"], r["predict"], r["radius"])
                                                                          for r in rows]
    assert "probability >= 1 - alpha = 0.99" in header
    # each row is the certifier's answer with the (seed, idx) generator
    x, label = test[4]
    res = certify(model, x, 8, 64, 0.01, 0.25, 10, 32, torch.Generator().manual_seed(7 * 1_000_003 + 4))
    row = next(r for r in rows if r["idx"] == 4)
    assert row["predict"] == res.prediction and row["radius"] == pytest.approx(res.radius, rel=1e-8)
    assert row["correct"] == int(res.prediction == label)
    # other settings in the same folder are refused, not mixed
    other = SmoothingSettings(0.5, 8, 64, 0.01, 32, 6, 2)
    with pytest.raises(UserError, match="other settings"):
        certify_dataset(model, test, other, tmp_path / "a", seed=7, tag="t")
    table = write_report(rows, SETTINGS, tmp_path / "a")
    assert [t["radius"] for t in table] == [0.0, 0.1, 0.25]
    md = (tmp_path / "a" / "certified_accuracy.md").read_text()
    assert "1 - alpha = 0.99" in md
    assert (tmp_path / "a" / "certified_accuracy.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kwargs", [{"sigma": 0.0}, {"alpha": 1.0}, {"n0": 100}])
def test_settings_are_validated(kwargs):
    args = dict(sigma=0.25, n0=8, n=64, alpha=0.01, batch_size=32)
    args.update(kwargs)
    with pytest.raises(UserError):
        SmoothingSettings(**args)


def test_certify_cli(tiny_synthetic, tmp_path, capsys):
    _, test = tiny_synthetic
    model = _model(test)
    ckpt = tmp_path / "m.pt"
    checkpoints.save_model_checkpoint(ckpt, model.state_dict(), model_meta("cnn_small", test.info))
    args = ["certify", "--checkpoint", str(ckpt), "--output", str(tmp_path / "out"), "--general.progress", "false",
            "--data.num_test", "64", "--smoothing.n0", "4", "--smoothing.n", "32", "--smoothing.num_examples", "3",
            "--smoothing.alpha", "0.01", "--smoothing.radii", "[0, 0.25, 5]"]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "warning: with n=32 and alpha=0.01" in cap.err and "radius 5" in cap.err
    last = json.loads(cap.out.strip().splitlines()[-1])
    assert last["examples"] == 3 and last["certified_acc"]["5"] == 0.0
    tsv = (tmp_path / "out" / "certify.tsv").read_text().splitlines()
    assert tsv[1] == "idx\tlabel\tpredict\tradius\tcorrect\ttime" and len(tsv) == 5
    # bad input is one line, exit code 2
    assert main(args + ["--smoothing.sigma", "0"]) == 2
    assert "sigma must be a positive number" in capsys.readouterr().err
    assert main(["certify", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err


def test_gaussian_augmentation_in_the_training_loop(tiny_synthetic):
    from abcrown_plugins.config import default_config
    from abcrown_plugins.training import TrainSettings, train

    train_set, _ = tiny_synthetic
    cfg = default_config().replace(training={"epochs": 1, "noise_sigma": 0.25}, data={"batch_size": 128})
    s = TrainSettings.from_config(cfg)
    assert s.noise_sigma == 0.25
    results = []
    for sigma in (0.25, 0.25, 0.0):
        torch.manual_seed(0)
        model = model_for("cnn_small", train_set.info)
        hist = train(model, train_set, TrainSettings(**{**s.__dict__, "noise_sigma": sigma}), torch.device("cpu"))
        results.append(hist[0]["loss"])
    assert results[0] == results[1]  # noise depends on (seed, epoch) only
    assert results[0] != results[2]  # and it is applied
