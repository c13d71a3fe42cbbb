"""Seed 000's time saved inside `transfer`, and `certify --smoothing.engine differential` on its checkpoints."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.cli import main
from abcrown_plugins.config import load_config
from abcrown_plugins.experiments import run_transfer
from abcrown_plugins.experiments.rundir import checkpoint_identity
from abcrown_plugins.experiments.transfer import BASE_HASH_KEY, summary_columns
from abcrown_plugins.models import build
from abcrown_plugins.runtime import set_progress
from abcrown_plugins.smoothing.run import read_tsv
from abcrown_plugins.transfer import verification_aware_prefix

RADII = [0.0, 0.1]
SMOOTHING = [("smoothing.n0", 4), ("smoothing.n", 64), ("smoothing.alpha", 0.01), ("smoothing.num_examples", 4),
             ("smoothing.batch_size", 32), ("smoothing.radii", RADII)]
CERTIFY = ["--general.progress", "false", "--data.num_test", "64", "--smoothing.n0", "4", "--smoothing.n", "64",
           "--smoothing.alpha", "0.01", "--smoothing.num_examples", "4", "--smoothing.batch_size", "32",
           "--smoothing.radii", "[0, 0.1]"]


@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory):
    """One tiny transfer: one task, a structured and an unstructured delta (k = 4 %), default allocation."""
    set_progress(False)
    body = {"pretrain_epochs": 1, "epochs": 1, "tasks": ["position"], "patterns": ["structured", "unstructured"],
            "ratios": [0.04], "baselines": [], "rigl_interval": 2, "mask_batches": 1, "diffstab_weight": 0.0}
    cfg = load_config(None, [("general.progress", False), ("general.device", "cpu"), ("model.arch", "cnn_small"),
                             ("data.num_train", 256), ("data.num_test", 64), ("data.batch_size", 64),
                             ("training.noise_sigma", 0.25)] + SMOOTHING
                      + [(f"transfer.{k}", v) for k, v in body.items()])
    out, rows = run_transfer(cfg, tmp_path_factory.mktemp("transfer") / "out")
    set_progress(True)
    return out, rows


def _certificates(tsv):
    return [(r["idx"], r["label"], r["predict"], r["radius"], r["correct"]) for r in read_tsv(tsv)[1]]


@pytest.mark.slow
def test_transfer_reports_time_saved_per_accounting_with_dense_certificates(transfer_run, tmp_path):
    out, rows = transfer_run
    assert [r["run"] for r in rows] == ["structured-k0.04", "unstructured-k0.04", "multitask-T2"]
    model = build("cnn_small", 3, 32, 4, (0.5,) * 3, (0.25,) * 3)
    for r in rows[:2]:
        # verification-aware allocation by default: the longest prefix that holds k, and it is reused
        assert r["frozen_prefix"] == verification_aware_prefix(model, r["pattern"], 0.04) > 0
        assert r["prefix_macs"] > 0.5
        assert 0 <= r["cert_acc@0"] <= 1 and r["cert_acc@0.1"] <= r["cert_acc@0"]
        for key in ("time_saved_live", "time_saved_trace"):
            assert math.isfinite(r[key]) and r[key] < 1
        assert r.get("time_saved_multitask") is None and r["certify_s"] > 0
    multi = rows[2]
    assert multi["pattern"] == "multitask" and math.isfinite(multi["time_saved_multitask"]) \
        and multi["time_saved_multitask"] < 1 and multi.get("time_saved_trace") is None
    # the CSV carries the columns, as fractions, and the multi-task row apart
    with open(out / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == summary_columns(RADII)
    assert {"time_saved_live", "time_saved_trace", "time_saved_multitask", "cert_acc@0", "cert_acc@0.1"} \
        <= set(table[0])
    assert [bool(t["time_saved_multitask"]) for t in table] == [False, False, True]
    assert float(table[0]["time_saved_trace"]) == pytest.approx(rows[0]["time_saved_trace"])
    md = (out / "summary.md").read_text()
    assert "Seed 000 Table 1 form" in md and "time saved, trace (%)" in md and "multi-task (%)" in md
    # identical counts: the transfer's rows of a sparse network are those of a dense certify run of it
    for r in rows[:2]:
        ckpt = out / "position" / r["run"] / "checkpoint.pt"
        assert main(["certify", "--checkpoint", str(ckpt), "--output", str(tmp_path / r["run"])] + CERTIFY) == 0
        assert _certificates(out / "position" / r["run"] / "certify" / "certify.tsv") == \
            _certificates(tmp_path / r["run"] / "certify.tsv")
        assert len(_certificates(tmp_path / r["run"] / "certify.tsv")) == 4
    timing = (out / "differential" / "attributes" / "timing.tsv").read_text().splitlines()
    assert len(timing) == 2 + 4 * 2  # comment, columns, 4 examples x 2 networks


@pytest.mark.slow
def test_certify_differential_rows_equal_dense_and_a_wrong_base_is_one_error_line(transfer_run, tmp_path, capsys):
    out, _ = transfer_run
    a, b = (str(out / "position" / run / "checkpoint.pt") for run in ("structured-k0.04", "unstructured-k0.04"))
    assert main(["certify", "--checkpoint", a, "--output", str(tmp_path / "dense")] + CERTIFY) == 0
    capsys.readouterr()
    assert main(["certify", "--checkpoint", a, "--output", str(tmp_path / "diff"), "--smoothing.engine",
                 "differential"] + CERTIFY) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert _certificates(tmp_path / "diff" / "certify.tsv") == _certificates(tmp_path / "dense" / "certify.tsv")
    assert last["examples"] == 4 and math.isfinite(last["time_saved_trace"]) and last["time_saved_live"] < 1
    assert "time saved" in (tmp_path / "diff" / "time_saved.md").read_text()
    # several downstream checkpoints of one base: multi-task, each network's rows those of its dense run
    assert main(["certify", "--checkpoint", a, b, "--output", str(tmp_path / "multi"), "--smoothing.engine",
                 "differential"] + CERTIFY) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(last["time_saved_multitask"]) and len(last["checkpoints"]) == 2
    assert main(["certify", "--checkpoint", b, "--output", str(tmp_path / "dense_b")] + CERTIFY) == 0
    capsys.readouterr()
    for ckpt, run, dense in ((a, "structured-k0.04", "dense"), (b, "unstructured-k0.04", "dense_b")):
        folder = tmp_path / "multi" / f"{run}-{checkpoint_identity(ckpt)[7:13]}"  # named by the run's folder
        assert _certificates(folder / "certify.tsv") == _certificates(tmp_path / dense / "certify.tsv")
    # several checkpoints with the dense engine: one line, exit 2
    assert main(["certify", "--checkpoint", a, b, "--output", str(tmp_path / "x")] + CERTIFY) == 2
    assert "--smoothing.engine differential" in capsys.readouterr().err
    # a checkpoint without a base network
    base = out / "pretrain" / "checkpoint.pt"
    assert main(["certify", "--checkpoint", str(base), "--smoothing.engine", "differential"] + CERTIFY) == 2
    assert "not a downstream checkpoint" in capsys.readouterr().err
    # a different base (content hash mismatch), then a missing one: one error line each
    saved = tmp_path / "base.pt"
    shutil.copy2(base, saved)
    try:
        ck = checkpoints.read_model_checkpoint(base)
        state = {k: v.clone() for k, v in ck.state_dict.items()}
        state["1.weight"] += 0.01
        checkpoints.save_model_checkpoint(base, state, ck.meta)
        assert checkpoints.read_model_checkpoint(a).meta.extra[BASE_HASH_KEY].startswith("sha256:")
        assert main(["certify", "--checkpoint", a, "--output", str(tmp_path / "y"), "--smoothing.engine",
                     "differential"] + CERTIFY) == 2
        err = capsys.readouterr().err
        assert "is not the one" in err and err.strip().count("\n") == 0
        base.unlink()
        assert main(["certify", "--checkpoint", a, "--output", str(tmp_path / "z"), "--smoothing.engine",
                     "differential"] + CERTIFY) == 2
        err = capsys.readouterr().err
        assert "is missing" in err and err.strip().count("\n") == 0
    finally:
        shutil.copy2(saved, base)
    assert torch.equal(checkpoints.read_model_checkpoint(base).state_dict["1.weight"],
                       checkpoints.read_model_checkpoint(saved).state_dict["1.weight"])
