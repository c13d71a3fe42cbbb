"""α,β-CROWN's own networks brought in: its logits, pruned, compacted, exported, verified by α,β-CROWN.

Networks no one here wrote (α,β-CROWN's ``model_defs.py`` and shipped weights, its sample
images and normalisation) go through the steps of ``tools/bench_byo_abcrown.py``, small: the
tool is the README's benchmark and this test runs its very code (loaded with ``runpy``), on
ResNet-2B (residual adds couple its channels) with 3 instances and a short timeout.

Needs ABCROWN_HOME (a checkout, its ``complete_verifier/models`` and ``datasets``) and
ABCROWN_PYTHON (its environment, with this package installed there); skipped otherwise, and
skipped naming the file when the checkout lacks a network's model or data file. Only the
check of the worked examples in ``exp_configs/byo/`` runs without them.
"""

from __future__ import annotations

import copy
import runpy
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from abcrown_plugins.abcrown.abcrown_env import INSTALL_HINT, find_abcrown
from abcrown_plugins.abcrown.vnncomp import INSTANCE_CONFIG
from abcrown_plugins.config import load_config
from abcrown_plugins.export.onnx_io import onnx_session, run_onnx
from abcrown_plugins.export.vnnlib import read_robustness_vnnlib
from abcrown_plugins.models import load_model
from abcrown_plugins.numerics import compare_logits
from abcrown_plugins.pruning.mask import Mask

REPO = Path(__file__).resolve().parents[2]
INSTALL = find_abcrown()
TOOL = types.SimpleNamespace(**runpy.run_path(str(REPO / "tools" / "bench_byo_abcrown.py"),
                                              run_name="bench_byo_abcrown"))


def needs_abcrown(test):
    """Marks a test external and slow, skipped without α,β-CROWN."""
    for mark in (pytest.mark.external, pytest.mark.slow, pytest.mark.skipif(INSTALL is None, reason=INSTALL_HINT)):
        test = mark(test)
    return test


N_INSTANCES = 3
TIMEOUT_S = 10


@pytest.fixture(scope="module")
def plugin_in_abcrown_env():
    r = subprocess.run([str(INSTALL.python), "-c", "import abcrown_plugins.abcrown.runner"], capture_output=True,
                       timeout=300)
    if r.returncode != 0:
        pytest.skip(f"abcrown_plugins is not importable by {INSTALL.python}; run `{INSTALL.python} -m pip install "
                    f"--no-deps -e {REPO}`")


def _network(name: str):
    net = TOOL.NETWORKS[name]
    missing = TOOL.missing_files(INSTALL, net)
    if missing:
        pytest.skip(f"{name}: the α,β-CROWN checkout {INSTALL.home} lacks {', '.join(missing)}")
    return net


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("byo")
    return folder, TOOL.write_wrapper(INSTALL, folder, list(TOOL.NETWORKS.values()))


@pytest.fixture(scope="module")
def resnet2b(work):
    folder, wrapper = work
    return TOOL.prepare(INSTALL, _network("resnet2b"), folder / "resnet2b", wrapper)


@needs_abcrown
@pytest.mark.parametrize("name", ["resnet2b", "cifar_cnn_a_adv"])
def test_logits_equal_abcrowns_own_loading(work, name):
    """python: and onnx: imports give α,β-CROWN's logits (its load_model, its normalisation) within 1e-5 relative;
    where its data loader runs offline, on its own normalised images too (data.mean/data.std checked)."""
    folder, wrapper = work
    net = _network(name)
    prep = TOOL.prepare(INSTALL, net, folder / f"{name}_logits", wrapper)
    check = TOOL.logits_check(INSTALL, prep, 4, folder / f"{name}_logits" / "reference")
    diffs = {k: v for k, v in check.items() if k.endswith("_max_diff")}
    assert set(diffs) >= {"python_max_diff", "onnx_max_diff"}
    if net.offline_data:
        assert {"python_own_data_max_diff", "onnx_own_data_max_diff"} <= set(diffs)
        assert check["own_data_labels_equal"]
    for key, diff in diffs.items():
        tol = check["tolerance_own_data" if "own_data" in key else "tolerance"]
        assert diff <= tol, f"{name} {key}: {diff:.3g} > {tol:.3g}"
    assert check["ok"]


@needs_abcrown
def test_the_python_import_reads_abcrowns_weights_file(resnet2b):
    """α,β-CROWN's resnet2b.pth ({"state_dict": ..., "test_acc": ...}) is the model.checkpoint as shipped."""
    assert resnet2b.weights == INSTALL.verifier_dir / resnet2b.net.weights


@needs_abcrown
def test_pruned_compacted_exported_and_verified(plugin_in_abcrown_env, resnet2b, tmp_path):
    """50 % of the weights (magnitude, ONNX import) and 30 % of the channel units (struct_lth, python: import),
    compaction equal to the masked network, exports equal to torch in onnxruntime, and α,β-CROWN's verdicts on
    the dense and both pruned networks on the same properties."""
    ckpts = TOOL.prune_runs(resnet2b, tmp_path, ("magnitude", "channels"))
    x = torch.from_numpy(TOOL.pixels(resnet2b, 8))

    dense = load_model(ckpts["dense"])
    with torch.no_grad():  # round 0 is α,β-CROWN's network, untouched
        reference = TOOL.imported_models(resnet2b)["python"](x)
        compare_logits(reference, dense.model(x), "dense round 0 vs the python: import")

    magnitude = load_model(ckpts["magnitude"])
    mask = Mask(magnitude.checkpoint.masks)
    kept = sum(int(mask[k].sum()) for k in mask)
    assert abs(kept / sum(mask[k].numel() for k in mask) - 0.5) < 1e-4

    masked = load_model(ckpts["channels"])
    small = load_model(ckpts["channels"], compact=True)
    assert small.compacted
    assert sum(p.numel() for p in small.model.parameters()) < sum(p.numel() for p in masked.model.parameters())
    with torch.no_grad():
        compare_logits(masked.model(x), small.model(x), "compacted vs masked")

    benches = TOOL.export_all(ckpts, tmp_path, N_INSTANCES, resnet2b.net.eps, TIMEOUT_S)
    boxes = {}
    for variant, bench in benches.items():
        rows = [line.split(",") for line in (bench / "instances.csv").read_text().splitlines() if line]
        assert len(rows) == N_INSTANCES
        model = load_model(ckpts[variant], compact=True).model
        session = onnx_session(bench / rows[0][0])
        got = np.concatenate([run_onnx(session, x[i:i + 1].numpy()) for i in range(len(x))])  # batch 1 (VNN-COMP)
        with torch.no_grad():
            compare_logits(model(x), got, f"{variant}: exported ONNX vs torch")
        boxes[variant] = [read_robustness_vnnlib(bench / vnnlib) for _, vnnlib, _ in rows]
    for variant in ("magnitude", "channels"):  # the same properties: boxes and labels of the dense export
        for a, b in zip(boxes["dense"], boxes[variant]):
            assert a.label == b.label
            np.testing.assert_array_equal(a.lower, b.lower)
            np.testing.assert_array_equal(a.upper, b.upper)

    light = copy.deepcopy(INSTANCE_CONFIG)  # a short attack and optimisation keep the test small
    light["attack"].update(pgd_restarts=2, pgd_steps=20)
    light["solver"]["alpha-crown"]["iteration"] = 10
    config = tmp_path / "abcrown_light.yaml"
    config.write_text(yaml.safe_dump(light))
    for variant, bench in benches.items():
        summary = TOOL.verify(bench, tmp_path / f"abcrown_{variant}", config)
        assert summary["n"] == N_INSTANCES
        assert summary["error"] == 0, f"{variant}: α,β-CROWN failed, logs under {tmp_path / f'abcrown_{variant}'}"
        assert set(summary["results"]) <= {"unsat", "sat", "timeout", "unknown"}
        assert summary["witnesses_checked"], f"{variant}: a sat witness was not re-checked by the runner"


@pytest.mark.parametrize("name, scheme", [("onnx_synthetic.yaml", "onnx:"),
                                          ("python_abcrown_resnet2b.yaml", "python:")])
def test_byo_examples_are_valid_configs(name, scheme):
    cfg = load_config(REPO / "exp_configs" / "byo" / name)
    assert cfg.model.arch.startswith(scheme)
    assert cfg.training.epochs == 0 and cfg.pruning.rounds == 1 and cfg.pruning.rewind == "none"
    assert cfg.data.mean is not None and len(cfg.data.mean) == len(cfg.data.std) == 3
    if scheme == "python:":
        module = cfg.model.arch[len(scheme):].rpartition(":")[0]
        assert (REPO / module).is_file()
