"""Sweeps: every cell an ordinary run, an aggregated report that recomputes from the cells, resume, plans."""

from __future__ import annotations

import csv
import dataclasses
import statistics
from pathlib import Path

import pytest

from abcrown_plugins.cli import main
from abcrown_plugins.errors import UserError
from abcrown_plugins.executor import ExecutorSettings
from abcrown_plugins.experiments.pruning_summary import best_round
from abcrown_plugins.experiments.sweep import load_sweep, run_sweep, summary_table

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "exp_configs" / "sweeps" / "synthetic_small.yaml"


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    sweep = load_sweep(SMALL)
    return sweep, out, run_sweep(sweep, out, ExecutorSettings())


def test_every_cell_is_a_run_and_the_report_recomputes(small_sweep):
    sweep, out, (_, rows, failed) = small_sweep
    assert not failed and len(sweep.plan) == 4 and len(rows) == 8  # 4 cells x (dense + 1 round)
    with open(out / "sweep.csv") as f:
        assert len(list(csv.DictReader(f))) == 8
    for cell in sweep.plan:
        summary = out / "cells" / cell.name / "summary.csv"
        assert summary.is_file()
        config = (out / "cells" / cell.name / "config.yaml").read_text()
        assert f"method: {cell.value('pruning.method')}" in config and f"seed: {cell.value('general.seed')}" in config
    # mean and std over seeds, recomputed from the cells' own summaries
    table = {(r["method"], r["row"]): r for r in summary_table(sweep, rows)}
    for method in ("imp", "random"):
        runs = []
        for seed in (100, 200):
            with open(out / "cells" / f"method-{method}_seed-{seed}" / "summary.csv") as f:
                runs.append([{k: (float(v) if k in ("verified_acc", "std_acc", "remain_ratio") else v or None)
                              for k, v in r.items()} for r in csv.DictReader(f)])
        best = [best_round([{**r, "round": int(r["round"])} for r in run]) for run in runs]
        acc = [b["verified_acc"] for b in best]
        expected = f"{100 * statistics.fmean(acc):.2f} ± {100 * statistics.stdev(acc):.2f}"
        assert table[(method, "best")]["verified_acc"] == expected
        assert table[(method, "best")]["verifier"] == "IBP"
    report = (out / "report.md").read_text()
    assert "| imp | best | 2 |" in report and "mean ± std over seeds" in report
    assert (out / "verified_acc.png").stat().st_size > 0 and (out / "instability.png").stat().st_size > 0


def test_a_killed_sweep_redoes_only_unfinished_cells(small_sweep):
    sweep, out, (_, rows, _) = small_sweep
    results = out / "results"
    (results / f"{sweep.plan[1].name}.json").unlink()  # as if the sweep was killed in cell 1
    stamps = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    _, again, failed = run_sweep(sweep, out, ExecutorSettings())
    assert not failed and again == rows
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json") if p.name in stamps} == stamps
    with pytest.raises(UserError, match="another sweep"):
        run_sweep(dataclasses.replace(sweep, overrides=(("training.epochs", 1),)), out)


def test_a_failed_cell_is_reported_and_the_others_go_on(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: bad\nbase: {SMALL.parent / '../pruning/synthetic/imp.yaml'}\n"
                    "overrides: {data.num_train: 64, data.num_test: 16, training.epochs: 1, pruning.rounds: 0,\n"
                    "            verification.pgd_steps: 0, data.root: /nonexistent}\n"
                    "axes:\n  data.dataset: [synthetic, mnist]\n")
    out, rows, failed = run_sweep(load_sweep(spec), tmp_path / "out", ExecutorSettings(retries=0))
    assert len(failed) == 1 and failed[0].startswith("dataset-mnist") and "mnist" in failed[0]
    assert {r["dataset"] for r in rows} == {"synthetic"}
    assert "## Failed cells" in (out / "report.md").read_text()


def test_seed_scale_sweeps_load_and_plan(capsys):
    for path in sorted((ROOT / "exp_configs" / "sweeps").glob("*.yaml")):
        sweep = load_sweep(path)
        if path.name.startswith(("cifar10_", "svhn_", "fashion_mnist_")):  # seed 001's scale: 10 methods x 5 seeds
            assert len(sweep.plan) == 50 and {c.value("general.seed") for c in sweep.plan} == {100, 200, 300, 400, 500}
        assert main(["sweep", str(path), "--dry-run"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[0] == f"sweep {sweep.name}: {len(sweep.plan)} cells" and len(lines) == len(sweep.plan) + 1


def test_bad_sweep_files_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("axes: {pruning.method: [imp, nosuch]}\n")
    with pytest.raises(UserError, match="sweep cell method-nosuch"):
        load_sweep(bad)
    bad.write_text("axes: {training.epoch: [1]}\n")
    with pytest.raises(UserError, match="did you mean 'training.epochs'"):
        load_sweep(bad)
    bad.write_text("axis: {}\n")
    with pytest.raises(UserError, match="'axes'"):
        load_sweep(bad)
