"""Integration with the real α,β-CROWN, run from upstream beside the project.

Needs ABCROWN_HOME (a checkout) and ABCROWN_PYTHON (its environment's python, with
this package installed there: pip install --no-deps -e .); skipped otherwise.
Soundness checks: anything our IBP verifies, α,β-CROWN verifies too; PGD never
breaks an instance α,β-CROWN called unsat; every sat witness is re-checked.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.attacks.pgd import pgd_attack
from abcrown_plugins.bounds import margin_lower_bounds
from abcrown_plugins.data import load_dataset
from abcrown_plugins.export import export_benchmark
from abcrown_plugins.abcrown.abcrown_env import INSTALL_HINT, find_abcrown
from abcrown_plugins.abcrown.results import read_results_pickle, results_rows
from abcrown_plugins.abcrown.vnncomp import run_benchmark
from abcrown_plugins.models import load_model

REPO = Path(__file__).resolve().parents[2]
INSTALL = find_abcrown()


def _plugin_importable() -> bool:
    if INSTALL is None:
        return False
    r = subprocess.run([str(INSTALL.python), "-c", "import abcrown_plugins.abcrown.hooks"], capture_output=True,
                       timeout=300)
    return r.returncode == 0


pytestmark = [
    pytest.mark.external,
    pytest.mark.slow,
    pytest.mark.skipif(INSTALL is None, reason=INSTALL_HINT),
]


@pytest.fixture(scope="module")
def plugin_in_abcrown_env():
    if not _plugin_importable():
        pytest.skip(f"abcrown_plugins is not importable by {INSTALL.python}; run `{INSTALL.python} -m pip install "
                    f"--no-deps -e {REPO}`")


def _abcrown(args: list[str], log: Path) -> subprocess.CompletedProcess:
    cmd = [str(INSTALL.python), str(INSTALL.script), *args, "--device", "cpu"]
    r = subprocess.run(cmd, cwd=INSTALL.verifier_dir, capture_output=True, text=True, timeout=1200)
    log.write_text(r.stdout + r.stderr)
    return r


def _run_config(config: str, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """α,β-CROWN on ``exp_configs/<config>``; asserts it finished and returns its result rows."""
    res_file = tmp_path / "res.pkl"
    r = _abcrown(["--config", str(REPO / "exp_configs" / config), "--results_file", str(res_file), *extra],
                 tmp_path / "abcrown.log")
    assert r.returncode == 0 and res_file.is_file(), f"α,β-CROWN failed, log: {tmp_path / 'abcrown.log'}"
    return r, results_rows(read_results_pickle(res_file))


def test_pruned_yaml_verifies_and_agrees_with_ibp_and_pgd(plugin_in_abcrown_env, tmp_path):
    _, rows = _run_config("pruned.yaml", tmp_path)
    assert len(rows) == 5
    assert sum(row["result"] == "unsat" for row in rows) >= 1

    model = load_model("zoo:cnn_7layer_synthetic_pruned.pt").model
    test = load_dataset("synthetic", "test", num=100)
    x, y = test.images[:5].float() / 255, test.labels[:5]
    eps = 2 / 255
    ibp = margin_lower_bounds(model, x, y, eps, 10).lower
    correct = model(x).argmax(1) == y
    for i, row in enumerate(rows):
        if correct[i] and (ibp[i] > 0).all():
            assert row["result"] == "unsat", f"example {i}: our IBP verifies it, α,β-CROWN says {row}"
        if row["result"] == "unsat":
            _, broken = pgd_attack(model, x[i:i + 1], y[i:i + 1], eps, steps=50, restarts=5,
                                   generator=torch.Generator().manual_seed(i))
            assert not broken.any(), f"PGD broke example {i} that α,β-CROWN verified"


def test_exported_benchmark_runs_instance_by_instance(plugin_in_abcrown_env, tmp_path):
    ckpt = checkpoints.resolve("zoo:cnn_7layer_synthetic_pruned.pt")
    bench = tmp_path / "bench"
    export_benchmark(ckpt, bench, n=3, eps=2 / 255, seed=0, timeout=60)
    results = run_benchmark(bench, tmp_path / "out")
    assert len(results) == 3
    assert all(r.result in ("sat", "unsat", "timeout", "unknown") for r in results), \
        [(r.result, r.note, r.log) for r in results]
    assert sum(r.result == "unsat" for r in results) >= 1
    assert all(r.witness_checked == "yes" for r in results if r.result == "sat")
    assert (tmp_path / "out" / "results.csv").is_file() and (tmp_path / "out" / "results.md").is_file()
    assert not list(bench.rglob("*.compiled"))  # the benchmark folder stays clean


def test_broken_instance_is_an_error_row_and_the_batch_goes_on(plugin_in_abcrown_env, tmp_path):
    ckpt = checkpoints.resolve("zoo:cnn_7layer_synthetic_pruned.pt")
    bench = tmp_path / "bench"
    export_benchmark(ckpt, bench, n=2, eps=2 / 255, seed=1, timeout=60)
    first_vnnlib = bench / (bench / "instances.csv").read_text().splitlines()[0].split(",")[1]
    first_vnnlib.write_text("(declare-const X_0 Real)\n(assert (<= X_0 oops))\n")
    results = run_benchmark(bench, tmp_path / "out")
    assert results[0].result == "error" and Path(results[0].log).is_file()
    assert results[1].result in ("sat", "unsat", "timeout", "unknown")


def test_sibling_config_cnn_small(plugin_in_abcrown_env, tmp_path):
    _, rows = _run_config("pruned_cnn_small.yaml", tmp_path)
    assert sum(row["result"] == "unsat" for row in rows) >= 1


def test_channel_pruned_resnet_is_verified_compacted(plugin_in_abcrown_env, tmp_path):
    from abcrown_plugins.abcrown.hooks import zoo_model

    masked = load_model("zoo:resnet_small_synthetic_slim.pt").model
    small = zoo_model(checkpoint="zoo:resnet_small_synthetic_slim.pt")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in masked.parameters())
    x = torch.rand(8, 3, 32, 32)
    assert torch.allclose(small(x), masked(x), atol=1e-5)
    _, rows = _run_config("pruned_resnet_small.yaml", tmp_path)
    assert sum(row["result"] == "unsat" for row in rows) >= 1


def test_large_eps_runs_through_crown_without_a_shape_error(plugin_in_abcrown_env, tmp_path):
    """At eps 0.1 most ReLUs are unstable and auto_LiRPA takes its dense patches path, where an
    elementwise normalisation layer once crashed it; the zoo's Normalize must not."""
    r, rows = _run_config("pruned_cnn_small.yaml", tmp_path, "--epsilon", "0.1", "--end", "1", "--pgd_order", "skip",
                          "--timeout", "5")
    assert "must match the size" not in r.stdout + r.stderr
    assert rows[0]["result"] in ("unsat", "unknown", "timeout")


def test_pruned_resnet18_nr_is_verified_through_the_hook_and_through_its_onnx(plugin_in_abcrown_env, tmp_path):
    """Seed 001's second architecture through the whole chain: trained, pruned, verified by α,β-CROWN."""
    loaded = load_model("zoo:resnet18_nr_synthetic_pruned.pt")
    assert loaded.meta.arch == "resnet18_nr"
    _, rows = _run_config("pruned_resnet18.yaml", tmp_path)
    assert sum(row["result"] == "unsat" for row in rows) >= 1
    bench = tmp_path / "bench"
    export_benchmark(checkpoints.resolve("zoo:resnet18_nr_synthetic_pruned.pt"), bench, n=3, eps=2 / 255, seed=0,
                     timeout=60)
    results = run_benchmark(bench, tmp_path / "out")
    assert sum(r.result == "unsat" for r in results) >= 1
    assert all(r.witness_checked == "yes" for r in results if r.result == "sat")
