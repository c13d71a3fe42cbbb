"""Through the CLI: a NaN network gets no verified accuracy, certificate or benchmark; sensible defaults."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.cli import main
from abcrown_plugins.data import dataset_info
from abcrown_plugins.models import model_for, model_meta

QUICKSTART = "zoo:cnn_small_synthetic_quickstart"  # trained and verified at eps 8/255 (its metadata)


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    info = dataset_info("synthetic")
    torch.manual_seed(0)
    model = model_for("cnn_small", info).eval()
    state = model.state_dict()
    name = next(k for k in state if k.endswith("weight") and state[k].dim() == 4)
    state[name].view(-1)[0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    checkpoints.save_model_checkpoint(path, state, model_meta("cnn_small", info).replace(eps=2 / 255))
    return path, name


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("abcrown-plugins: error:")
    return lines[0]


@pytest.mark.parametrize("command", [
    ["verify", "--data.num_test", "8"],
    ["certify", "--smoothing.n", "10", "--smoothing.n0", "5", "--smoothing.num_examples", "1"],
    ["export", "--n", "1", "--eps", "2/255"],
], ids=lambda c: c[0])
def test_a_nan_network_gets_nothing_and_exit_2(nan_checkpoint, tmp_path, capsys, command):
    path, tensor = nan_checkpoint
    out = tmp_path / "out"
    flag = "--out" if command[0] == "export" else "--output"
    assert main([command[0], "--checkpoint", str(path), flag, str(out), *command[1:]]) == 2
    line = one_error_line(capsys)
    assert f"'{tensor}'" in line and "non-finite" in line
    assert not out.exists()


def test_verify_takes_eps_from_the_checkpoint_unless_given(tmp_path, capsys):
    assert main(["verify", "--checkpoint", QUICKSTART, "--data.num_test", "16"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["eps"] == pytest.approx(8 / 255) and "(8/255)" in out
    assert main(["verify", "--checkpoint", QUICKSTART, "--data.num_test", "16", "--eps", "2/255"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eps"] == pytest.approx(2 / 255)
    cfg = tmp_path / "v.yaml"
    cfg.write_text("verification:\n  eps: 2/255\n")  # given in the file, even if equal to the default
    assert main(["verify", "--checkpoint", QUICKSTART, "--config", str(cfg), "--data.num_test", "16"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eps"] == pytest.approx(2 / 255)


@pytest.mark.parametrize("command", [["verify"], ["export", "--out", "x", "--n", "1"]], ids=["verify", "export"])
@pytest.mark.parametrize("eps", ["-1/255", "-0.5", "-1e-3", "nan", "-inf", "1e400"])
def test_bad_eps_gets_the_projects_own_message(capsys, command, eps):
    assert main([command[0], "--checkpoint", QUICKSTART, *command[1:], "--eps", eps]) == 2
    line = one_error_line(capsys)
    assert "expected one argument" not in line and eps in line
    assert ("non-negative radius" in line) if eps[1:2].isdigit() else ("finite" in line)


def test_train_warns_when_epochs_end_before_the_eps_ramp(tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("general: {progress: false}\nmodel: {arch: cnn_small}\n"
                   "data: {num_train: 64, num_test: 16, batch_size: 64}\n"
                   "training: {method: ibp, epochs: 1, eps_warmup_epochs: 1, eps_ramp_epochs: 5}\n"
                   "verification: {pgd_steps: 0}\n")
    assert main(["train", str(cfg), "--output", str(tmp_path / "out")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("abcrown-plugins: warning: training.epochs 1 ends before")


def test_empty_config_file_is_one_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("")
    assert main(["train", str(cfg), "--output", str(tmp_path / "out")]) == 2
    assert "empty.yaml' is empty" in one_error_line(capsys) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("timeout", ["nan", "inf", "-inf"])
def test_export_refuses_a_non_finite_timeout(tmp_path, capsys, timeout):
    out = tmp_path / "bench"
    assert main(["export", "--checkpoint", QUICKSTART, "--out", str(out), "--n", "1", "--eps", "2/255",
                 "--timeout", timeout]) == 2
    assert "--timeout" in one_error_line(capsys) and not out.exists()


def test_export_folder_has_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["export", "--checkpoint", QUICKSTART, "--out", str(tmp_path / "bench"), "--n", "1",
                     "--eps", "2/255"]) == 0
    finally:
        os.umask(old)
    for d in [tmp_path / "bench", tmp_path / "bench" / "onnx", tmp_path / "bench" / "vnnlib"]:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o755, d
    for f in (tmp_path / "bench").rglob("*"):
        if f.is_file() and f.name != "generate_properties.py":
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o644, f
