"""α,β-CROWN inside the pruning loop: columns, per-instance files, cross-checks, executor identity.

The runs need a real α,β-CROWN (``ABCROWN_HOME``, ``ABCROWN_PYTHON``) and skip without it; the
refusal without it is tested everywhere.
"""

from __future__ import annotations

import csv

import pytest

from abcrown_plugins.abcrown.abcrown_env import INSTALL_HINT, find_abcrown
from abcrown_plugins.cli import main

TINY = """
general: {name: tiny_abcrown, progress: false, seed: 3}
model: {arch: cnn_small}
data: {dataset: synthetic, num_train: 256, num_test: 64, batch_size: 64}
training: {method: ibp, epochs: 2, eps_warmup_epochs: 0, eps_ramp_epochs: 1, eps: 8/255}
pruning: {rounds: 1, rate: 0.5}
verification: {eps: 2/255, method: abcrown, num_examples: 4, timeout: 30, pgd_steps: 0}
"""


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_without_abcrown_the_run_stops_before_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ABCROWN_HOME", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY)
    assert main(["run", str(cfg), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "α,β-CROWN not found" in err[0] and "ABCROWN_HOME" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.external
@pytest.mark.slow
@pytest.mark.skipif(find_abcrown() is None, reason=INSTALL_HINT)
def test_abcrown_columns_every_round_and_identical_on_two_workers(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "serial"
    assert main(["run", str(cfg), "--output", str(out)]) == 0
    summary = _rows(out / "summary.csv")
    assert len(summary) == 2
    for row in summary:
        counts = sum(int(row[f"abcrown_{k}"]) for k in ("safe", "unsafe", "timeout", "unknown", "error",
                                                         "misclassified"))
        assert counts == 4 and float(row["abcrown_verified_acc"]) == int(row["abcrown_safe"]) / 4
        assert int(row["abcrown_error"]) == 0  # no crash, no rejected witness, no soundness alarm
        inst = _rows(out / f"round_{row['round']}" / "abcrown.csv")
        assert [int(r["idx"]) for r in inst] == [0, 1, 2, 3]
        for r in inst:
            if r["ibp_verified"] == "True":
                assert r["result"] == "safe"  # IBP is sound: α,β-CROWN must verify what IBP verifies
            if r["result"] == "unsafe":
                assert r["witness_checked"] == "yes"
            if r["result"] != "misclassified":
                assert float(r["peak_rss_mib"]) > 100 and float(r["time_s"]) > 0
    assert (out / "abcrown_cost.png").stat().st_size > 0 and (out / "verified_acc.png").stat().st_size > 0
    assert "α,β-CROWN verified" in (out / "summary.md").read_text()

    two = tmp_path / "two"
    assert main(["run", str(cfg), "--output", str(two), "--workers", "2"]) == 0
    for r in (0, 1):
        a, b = _rows(out / f"round_{r}" / "abcrown.csv"), _rows(two / f"round_{r}" / "abcrown.csv")
        keep = ("idx", "label", "prediction", "ibp_verified", "result", "abcrown_result", "witness_checked")
        assert [{k: x[k] for k in keep} for x in a] == [{k: x[k] for k in keep} for x in b]


@pytest.mark.external
@pytest.mark.skipif(find_abcrown() is None, reason=INSTALL_HINT)
def test_verify_with_abcrown_and_a_crash_is_an_error_row(tmp_path, capsys):
    args = ["verify", "--checkpoint", "zoo:cnn_small_synthetic_quickstart.pt", "--eps", "8/255",
            "--verification.method", "abcrown", "--verification.num_examples", "3", "--verification.timeout", "30",
            "--data.num_test", "50", "--general.progress", "false"]
    assert main([*args, "--output", str(tmp_path / "ok")]) == 0
    rows = _rows(tmp_path / "ok" / "abcrown.csv")
    assert len(rows) == 3 and all(r["result"] in ("safe", "unsafe", "misclassified") for r in rows)
    assert all(r["result"] == "safe" for r in rows if r["ibp_verified"] == "True")
    assert "α,β-CROWN" in capsys.readouterr().out
    # an α,β-CROWN that raises (here: a solver config it rejects) gives error rows, never timeout/unknown
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver:\n  no_such_option: 1\n")
    assert main([*args, "--output", str(tmp_path / "bad"), "--verification.abcrown_config", str(bad)]) == 0
    rows = _rows(tmp_path / "bad" / "abcrown.csv")
    assert [r["result"] for r in rows if r["result"] != "misclassified"] == \
        ["error"] * sum(r["result"] != "misclassified" for r in rows)
    assert all(r["abcrown_result"] == "error" for r in rows if r["result"] != "misclassified")
