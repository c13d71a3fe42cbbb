"""A benchmark folder is self-contained, redraws without half-written states, and bad inputs are one line."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.checkpoints import TaskInfo
from abcrown_plugins.cli import main
from abcrown_plugins.data import load_dataset
from abcrown_plugins.errors import UserError
from abcrown_plugins.export import export_benchmark, generate_properties, read_robustness_vnnlib
from abcrown_plugins.export import generate_properties_template as standalone
from abcrown_plugins.fileio import FileLock
from abcrown_plugins.models import build, model_for, model_meta
from abcrown_plugins.transfer.scenario import SCENARIO, attribute_task

#: a sitecustomize that makes ``import abcrown_plugins`` (and the model zoo) fail: the package is not installed
BLOCKER = """
import importlib.abc, sys

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("abcrown_plugins", "model_zoo"):
            raise ImportError(f"{name} is not installed here")
        return None

sys.meta_path.insert(0, _Block())
"""


@pytest.fixture(scope="module")
def bench(small_checkpoint, tmp_path_factory):
    """A benchmark of three properties (seed 1)."""
    out = tmp_path_factory.mktemp("b") / "bench"
    export_benchmark(small_checkpoint, out, n=3, eps=2 / 255, seed=1, timeout=30)
    return out


@pytest.fixture
def copy(bench, tmp_path):
    dst = tmp_path / "bench"
    shutil.copytree(bench, dst)
    return dst


def rows(folder):
    return list(csv.reader((folder / "instances.csv").read_text().splitlines()))


def snapshot(folder) -> dict[str, str]:
    """instances.csv and every file it names, by content hash."""
    files = ["instances.csv"] + [r[1] for r in rows(folder)] + sorted({r[0] for r in rows(folder)})
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in files}


def without_package(tmp_path) -> dict[str, str]:
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(blocker)
    return env


def test_generate_properties_runs_without_the_package(copy, tmp_path):
    env = without_package(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import abcrown_plugins"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "not installed here" in probe.stderr  # the blocker works
    elsewhere = tmp_path / "moved"
    shutil.move(copy, elsewhere)
    before = rows(elsewhere)
    r = subprocess.run([sys.executable, "generate_properties.py", "7"], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    after = rows(elsewhere)
    assert len(after) == 3 and after != before
    assert generate_properties(elsewhere, 7) == [int(v.split("_idx")[1].split("_")[0]) for _, v, _ in after]
    assert rows(elsewhere) == after  # the package draws with the same code
    # only the properties instances.csv names are left
    assert sorted(p.name for p in (elsewhere / "vnnlib").iterdir()) == sorted(Path(v).name for _, v, _ in after)


def test_properties_come_from_the_stored_split(bench):
    images = np.load(bench / standalone.DATA_IMAGES)
    labels = np.load(bench / standalone.DATA_LABELS)
    test = load_dataset("synthetic", "test")
    assert np.array_equal(images, test.images.numpy()) and np.array_equal(labels, test.labels.numpy())
    for _, vnn, _ in rows(bench):
        idx = int(vnn.split("_idx")[1].split("_")[0])
        prop = read_robustness_vnnlib(bench / vnn)
        assert prop.label == labels[idx]
        x = test[idx][0].flatten().numpy()
        np.testing.assert_array_equal(prop.lower, np.clip(x.astype(np.float64) - 2 / 255, 0, 1).astype(np.float32))


def test_a_failed_redraw_leaves_the_previous_benchmark_intact(copy, capsys):
    before = snapshot(copy)
    settings = (copy / "benchmark.json").read_text()
    (copy / "benchmark.json").write_text(settings.replace('"n": 3', '"n": 100000'))  # more than can be drawn
    with pytest.raises(UserError, match="classified correctly"):
        generate_properties(copy, 5)
    (copy / "benchmark.json").write_text(settings)
    assert snapshot(copy) == before


def test_a_killed_redraw_leaves_the_previous_benchmark_intact(copy, monkeypatch):
    before = snapshot(copy)
    calls = {"n": 0}
    real = standalone.write_atomic

    def killed_after_two(path, text):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt  # the process dies here
        real(path, text)

    monkeypatch.setattr(standalone, "write_atomic", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        generate_properties(copy, 11)
    monkeypatch.undo()
    assert snapshot(copy) == before
    generate_properties(copy, 11)
    assert sorted(p.name for p in (copy / "vnnlib").iterdir()) == sorted(Path(v).name for _, v, _ in rows(copy))


def test_a_corrupt_onnx_is_one_line_for_generate_properties(copy, tmp_path):
    onnx_file = copy / rows(copy)[0][0]
    onnx_file.write_bytes(os.urandom(256))
    r = subprocess.run([sys.executable, "generate_properties.py", "2"], cwd=copy, env=without_package(tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not a valid ONNX network" in r.stderr and "Traceback" not in r.stderr
    for bad in ("-1", "x" * 500):
        r = subprocess.run([sys.executable, "generate_properties.py", bad], cwd=copy, capture_output=True, text=True)
        assert r.returncode == 2 and "SEED" in r.stderr and len(r.stderr) < 200


def test_a_killed_export_leaves_nothing_behind_on_the_next_run(small_checkpoint, tmp_path):
    out = tmp_path / "bench"
    stale = tmp_path / ".bench.tmp-k1ll3d"  # what an export killed before its rename leaves
    (stale / "onnx").mkdir(parents=True)
    (stale / "onnx" / "half.onnx").write_bytes(b"\x08")
    assert main(["export", "--checkpoint", str(small_checkpoint), "--out", str(out), "--n", "1", "--eps",
                 "2/255"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]
    assert main(["export", "--checkpoint", str(small_checkpoint), "--out", str(out), "--n", "2", "--eps", "2/255",
                 "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"] and len(rows(out)) == 2


def test_two_exports_into_one_folder_do_not_mix(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "bench"
    with FileLock(tmp_path / ".bench.lock", "held"):
        assert main(["export", "--checkpoint", str(small_checkpoint), "--out", str(out), "--n", "1", "--eps",
                     "2/255"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "being exported by another run" in err and not out.exists()


@pytest.mark.parametrize("problem", ["is a file", "parent is a file"])
def test_export_output_problems_are_one_line(small_checkpoint, tmp_path, capsys, problem):
    out = tmp_path / "bench"
    if problem == "is a file":
        out.write_text("x")
    else:
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "bench"
    assert main(["export", "--checkpoint", str(small_checkpoint), "--out", str(out), "--n", "1", "--eps",
                 "2/255"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err


def transfer_checkpoint(path: Path, attribute: str = "position") -> Path:
    base = load_dataset("synthetic", "test", num=16)
    info = attribute_task(base, attribute).info
    torch.manual_seed(0)
    model = model_for("cnn_small", info).eval()
    meta = model_meta("cnn_small", info).replace(
        dataset="synthetic", task=TaskInfo(scenario=SCENARIO, base_dataset="synthetic", attribute=attribute))
    checkpoints.save_model_checkpoint(path, model.state_dict(), meta)
    return path


def test_export_of_a_transfer_checkpoint_uses_the_task_labels_or_refuses(tmp_path, capsys):
    ckpt = transfer_checkpoint(tmp_path / "down.pt")
    task = attribute_task(load_dataset("synthetic", "test"), "position")
    out = tmp_path / "bench"
    code = main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--n", "2", "--eps", "2/255"])
    if code == 2:  # refused: one line, nothing written
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "attribute task 'position'" in err and not out.exists()
    else:
        assert code == 0
    from abcrown_plugins.experiments import run_export

    summary = run_export(ckpt, out, 2, 2 / 255, 0, force=True)
    assert summary["num_classes"] == 2 and summary["dataset"] == "synthetic:position"
    assert np.array_equal(np.load(out / standalone.DATA_LABELS), task.labels.numpy())
    for _, vnn, _ in rows(out):
        idx = int(vnn.split("_idx")[1].split("_")[0])
        prop = read_robustness_vnnlib(out / vnn)
        assert prop.label == int(task.labels[idx]) and prop.num_classes == 2


def test_a_corrupt_onnx_is_one_line_for_vnncomp_run(copy, tmp_path, capsys):
    (copy / rows(copy)[0][0]).write_bytes(os.urandom(300))
    assert main(["vnncomp", "run", str(copy), "--out", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a valid ONNX network" in err
    assert not (tmp_path / "results").exists()  # checked before anything is written or started


def multi_head_checkpoint(path: Path) -> Path:
    """A transfer base network: one head per pretraining attribute (shape: 10, fg_color: 4)."""
    info = load_dataset("synthetic", "test", num=16).info
    torch.manual_seed(0)
    model = build("cnn_small", info.channels, info.size, 14, info.mean, info.std).eval()
    meta = model_meta("cnn_small", info).replace(
        num_classes=14, heads=[["shape", 10], ["fg_color", 4]],
        task=TaskInfo(scenario=SCENARIO, base_dataset="synthetic", attributes=["shape", "fg_color"]))
    checkpoints.save_model_checkpoint(path, model.state_dict(), meta)
    return path


@pytest.mark.parametrize("command", ["verify", "export"])
def test_verify_and_export_of_transfer_checkpoints_never_trace_back(tmp_path, capsys, command):
    down = transfer_checkpoint(tmp_path / "down.pt")
    base = multi_head_checkpoint(tmp_path / "base.pt")
    args = {"verify": ["verify", "--data.num_test", "16", "--verification.pgd_steps", "0",
                       "--general.progress", "false", "--eps", "1/255"],
            "export": ["export", "--n", "1", "--eps", "1/255", "--out"]}[command]
    for i, ckpt in enumerate([down, base]):
        extra = [str(tmp_path / f"bench{i}")] if command == "export" else []
        code = main([*args, *extra, "--checkpoint", str(ckpt)])
        cap = capsys.readouterr()
        if ckpt == base or code == 2:
            assert code == 2 and len(cap.err.strip().splitlines()) == 1, cap.err
        if ckpt == down and command == "verify":
            assert code == 0 and "synthetic" in cap.out


def test_vnncomp_run_never_answers_a_redrawn_benchmark_from_old_results(copy, tmp_path, monkeypatch):
    """α,β-CROWN replaced by a stub that records what it is asked; finished instances are reused only when
    their network, property and settings are the same."""
    from abcrown_plugins.abcrown import vnncomp
    from abcrown_plugins.abcrown.runner import InstanceResult

    asked = []

    def stub(index, onnx, vnnlib, timeout, folder, out, config, threads=None):
        asked.append(vnnlib)
        return InstanceResult(index, onnx, vnnlib, timeout, "unsat", 0.1, "", "").as_dict()

    monkeypatch.setattr(vnncomp, "verify_instance", stub)
    monkeypatch.setattr(vnncomp, "require_abcrown", lambda: None)
    out = tmp_path / "results"
    first = vnncomp.run_benchmark(copy, out)
    assert len(asked) == 3
    vnncomp.run_benchmark(copy, out)
    assert len(asked) == 3  # resumed: nothing asked again
    generate_properties(copy, 12)  # other images
    again = vnncomp.run_benchmark(copy, out)
    assert [r.vnnlib for r in again] == [v for _, v, _ in rows(copy)] != [r.vnnlib for r in first]
    assert set(asked[3:]) >= {v for _, v, _ in rows(copy)} - {r.vnnlib for r in first}
