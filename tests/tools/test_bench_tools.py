"""The benchmark tools run end to end with tiny settings (subprocess) and report what they promise.

Only the shape of the report is checked: the last stdout line is one JSON object with the
documented fields, medians with their ``[min, max]`` spread. Timings are never asserted
(they depend on the machine and its load); the FLOP count and the interleaving order are.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
THROUGHPUT = REPO / "tools" / "bench_throughput.py"


def _tool(path: Path) -> types.SimpleNamespace:
    return types.SimpleNamespace(**runpy.run_path(str(path), run_name=path.stem))


def _last_json(cmd: list[str], cwd: Path) -> dict:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _is_spread(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and v[0] <= v[1]


def test_layer_flops_of_cnn_7layer():
    """2 * Cin/groups * k*k * Cout * Hout*Wout per conv, 2 * in * out per linear, summed by hand."""
    tool = _tool(THROUGHPUT)
    model, x = tool.build("cnn_7layer", 0)
    layers = tool.layer_shapes(model, x)
    by_hand = (2 * 3 * 9 * 32 * 32 * 32 + 2 * 32 * 16 * 64 * 16 * 16 + 2 * 64 * 9 * 64 * 16 * 16
               + 2 * 64 * 16 * 128 * 8 * 8 + 2 * 128 * 16 * 128 * 4 * 4 + 2 * 2048 * 100 + 2 * 100 * 10)
    assert [d["kind"] for d in layers] == ["Conv2d"] * 5 + ["Linear"] * 2
    assert sum(d["flops"] for d in layers) == by_hand
    assert layers[0]["in_shape"] == (3, 32, 32)


def test_interleaved_rounds_rotate_and_count():
    tool = _tool(THROUGHPUT)
    calls: list[str] = []
    jobs = {k: (1, lambda k=k: calls.append(k)) for k in "abc"}
    times = tool.interleaved(jobs, reps=3, min_timed_s=0.0)  # one call per timing
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    # a warm-up call of each, then rounds in rotated order
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab"
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)


@pytest.mark.slow
def test_bench_throughput_tiny(tmp_path):
    out = tmp_path / "out"
    res = _last_json([sys.executable, str(THROUGHPUT), "--n", "8", "--batches", "2,4", "--reps", "2",
                      "--threads", "1", "--ibp-batch", "2", "--ibp-batches", "2", "--scaling-n", "4",
                      "--out", str(out)], REPO)
    for field in ("conv_ceiling_gflops", "certify_roofline_fraction", "certify_roofline_fraction_spread",
                  "ibp_over_forward", "ibp_over_forward_spread", "differential_roofline_fraction",
                  "batch_sweep_us", "batch_sweep_us_spread", "chosen_over_best", "default_over_best",
                  "meets_certify_1_thread", "meets_certify_all_threads", "meets_ibp_over_forward",
                  "meets_chosen_over_best", "shortfall", "loadavg_start", "contended", "certify_cpu_per_wall"):
        assert field in res, field
    assert set(res["certify_roofline_fraction"]) == {"1"}
    assert res["certify_roofline_fraction"]["1"] > 0
    assert _is_spread(res["certify_roofline_fraction_spread"]["1"])
    assert _is_spread(res["ibp_over_forward_spread"]["1"])
    assert set(res["batch_sweep_us"]["1"]) >= {"2", "4"}
    assert res["differential_exact"] is True
    if res["calibration_available"]:
        assert str(res["certify_batch"]["1"]) in res["batch_sweep_us"]["1"]  # the chosen batch is timed too
        assert isinstance(res["meets_chosen_over_best"], bool)
    else:
        assert res["chosen_over_best"] is None and res["meets_chosen_over_best"] is None
    rows = (out / "scaling.csv").read_text().splitlines()
    assert rows[0].startswith("model,workload,n,batch,threads")
    workloads = {r.split(",")[1] for r in rows[1:]}
    assert workloads == {"certify", "ibp"}
    assert all(r.split(",")[-1] != "" for r in rows[1:]), "every row has its peak memory"
    assert (out / "scaling.md").read_text().startswith("| Model")
    assert (out / "scaling.png").exists() == (res["plot"] is not None)
    assert json.loads((out / "results.json").read_text())["cnn_7layer"]["model"] == "cnn_7layer"


@pytest.mark.slow
def test_bench_pruning_reports_spread():
    res = _last_json([sys.executable, str(REPO / "tools" / "bench_pruning.py"), "--reps", "1", "--batch", "8",
                      "--verify-batch", "8"], REPO)
    assert res["reps"] == 1
    for field in ("nrs_overhead_ibp", "nrs_overhead_adv", "compaction_speedup"):
        assert _is_spread(res[f"{field}_spread"]), field
        assert res[f"{field}_spread"][0] == pytest.approx(res[field], abs=2e-3)  # one repetition: min = median
