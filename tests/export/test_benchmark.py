"""export: a VNN-COMP folder that passes the format checks, with ONNX checked against torch."""

import csv
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.cli import main
from abcrown_plugins.data import load_dataset
from abcrown_plugins.export import onnx_session, read_robustness_vnnlib, run_onnx
from abcrown_plugins.models import load_model


@pytest.fixture(scope="module")
def bench(small_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bench"
    assert main(["export", "--checkpoint", str(small_checkpoint), "--out", str(out), "--n", "4", "--eps", "2/255",
                 "--seed", "3", "--timeout", "30"]) == 0
    return out


def rows(out):
    return list(csv.reader((out / "instances.csv").read_text().splitlines()))


def test_layout_and_instances(bench):
    assert (bench / "generate_properties.py").is_file()
    r = rows(bench)
    assert len(r) == 4 and all(len(row) == 3 for row in r)
    assert not r[0][0].startswith("onnx") or r[0][0].endswith(".onnx")  # no header row
    total = sum(float(row[2]) for row in r)
    assert total <= 6 * 3600
    for onnx_rel, vnn_rel, _ in r:
        assert onnx_rel.startswith("onnx/") and vnn_rel.startswith("vnnlib/")
        assert (bench / onnx_rel).is_file() and (bench / vnn_rel).is_file()


def test_onnx_is_valid_and_equals_torch(bench, small_checkpoint):
    path = bench / rows(bench)[0][0]
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 13
    ops = {n.op_type for n in m.graph.node}
    assert "BatchNormalization" not in ops and "Squeeze" not in ops and "Constant" not in ops
    # every Conv reads its weight from an initializer (what α,β-CROWN's ONNX converter needs)
    inits = {i.name for i in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[1] in inits for n in convs)
    model = load_model(small_checkpoint).model
    session = onnx_session(path)
    x = torch.rand(16, 1, 3, 32, 32)
    for xi in x:
        np.testing.assert_allclose(run_onnx(session, xi.numpy()), model(xi).detach().numpy(), atol=1e-5, rtol=0)


def test_properties_match_correctly_classified_test_images(bench):
    test = load_dataset("synthetic", "test")
    session = onnx_session(bench / rows(bench)[0][0])
    for _, vnn_rel, _ in rows(bench):
        prop = read_robustness_vnnlib(bench / vnn_rel)
        idx = int(vnn_rel.split("_idx")[1].split("_")[0])
        x, y = test[idx]
        assert prop.label == int(y)
        centre = x.flatten().numpy()
        np.testing.assert_allclose(prop.lower, np.clip(centre - 2 / 255, 0, 1), atol=1e-7)
        np.testing.assert_allclose(prop.upper, np.clip(centre + 2 / 255, 0, 1), atol=1e-7)
        assert int(np.argmax(run_onnx(session, x[None].numpy()))) == int(y)


def test_generate_properties_seed_changes_instances(bench):
    before = rows(bench)

    def regen(seed):
        r = subprocess.run([sys.executable, "generate_properties.py", str(seed)], cwd=bench, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return rows(bench)

    other = regen(4)
    assert [row[1] for row in other] != [row[1] for row in before]
    assert regen(3) == before  # deterministic for a seed
    bad = subprocess.run([sys.executable, "generate_properties.py", "x"], cwd=bench, capture_output=True, text=True)
    assert bad.returncode == 2 and "SEED" in bad.stderr


@pytest.mark.parametrize("args,expected", [
    (["--n", "400", "--timeout", "60"], "exceeds VNN-COMP's 6 h"),
    (["--n", "2", "--eps", "two"], "eps"),
    (["--n", "0"], "at least 1"),
])
def test_bad_export_arguments(small_checkpoint, tmp_path, capsys, args, expected):
    base = ["export", "--checkpoint", str(small_checkpoint), "--out", str(tmp_path / "b"), "--eps", "2/255"]
    merged = base + args if "--eps" not in args else base[:-2] + args
    assert main(merged) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_existing_folder_needs_force(small_checkpoint, bench, capsys):
    assert main(["export", "--checkpoint", str(small_checkpoint), "--out", str(bench), "--n", "1", "--eps",
                 "2/255"]) == 2
    assert "--force" in capsys.readouterr().err
