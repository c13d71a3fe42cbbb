"""The main job end to end on tiny settings, through the real CLI entry point."""

import contextlib
import csv
import io
import subprocess
import sys

import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.cli import main
from abcrown_plugins.models import load_model

TINY = """
general: {name: tiny, progress: false}
model: {arch: cnn_small}
data: {dataset: synthetic, num_train: 256, num_test: 64, batch_size: 64}
training: {method: ibp, epochs: 2, eps_warmup_epochs: 0, eps_ramp_epochs: 1}
pruning: {rounds: 2, rate: 0.2}
verification: {eps: 2/255}
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    cfg = d / "tiny.yaml"
    cfg.write_text(TINY)
    out = d / "out"
    assert main(["run", str(cfg), "--output", str(out)]) == 0
    return cfg, out


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_summary_files(tiny_run):
    _, out = tiny_run
    rows = read_rows(out / "summary.csv")
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    ratios = [float(r["remain_ratio"]) for r in rows]
    assert ratios[0] == 1.0 and abs(ratios[1] - 0.8) < 1e-4 and abs(ratios[2] - 0.64) < 1e-4
    for r in rows:
        assert 0 <= float(r["verified_acc"]) <= float(r["std_acc"]) <= 1
        assert float(r["time_s"]) > 0 and float(r["instability"]) >= 0
    md = (out / "summary.md").read_text()
    assert "| round | remaining weights | clean acc | verified acc" in md and md.count("\n| ") >= 4
    assert (out / "verified_acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoints_are_folded_and_verifiable(tiny_run):
    _, out = tiny_run
    payload = checkpoints.read_model_checkpoint(out / "round_2" / "checkpoint.pt")
    assert not any("weight_orig" in k or "weight_mask" in k for k in payload.state_dict)
    model = load_model(payload).model  # strict load
    for k, m in payload.masks.items():
        assert (payload.state_dict[k][~m] == 0).all()
    assert payload.meta.metrics["round"] == 2
    assert isinstance(model(torch.rand(1, 3, 32, 32)), torch.Tensor)


def test_rerun_resumes_with_same_numbers(tiny_run):
    cfg, out = tiny_run
    before = read_rows(out / "summary.csv")
    (out / "round_2" / "checkpoint.pt").unlink()  # as if killed during round 2
    assert main(["run", str(cfg), "--output", str(out)]) == 0
    after = read_rows(out / "summary.csv")
    keys = ["round", "remain_ratio", "std_acc", "verified_acc", "instability", "train_acc"]
    assert [[r[k] for k in keys] for r in before] == [[r[k] for k in keys] for r in after]


def test_output_folder_of_other_config_is_refused(tiny_run, capsys):
    cfg, out = tiny_run
    assert main(["run", str(cfg), "--output", str(out), "--training.epochs", "3"]) == 2
    assert "holds another run" in capsys.readouterr().err


def test_verify_command(tiny_run, capsys):
    _, out = tiny_run
    ckpt = out / "round_0" / "checkpoint.pt"
    assert main(["verify", "--checkpoint", str(ckpt), "--eps", "0", "--data.num_test", "64",
                 "--general.progress", "false"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    import json

    res = json.loads(lines[-1])
    # at eps 0 the IBP box is a point: verified accuracy equals clean accuracy
    assert res["verified_acc"] == pytest.approx(res["std_acc"])


def cli(*args):
    """``main(args)`` in this process, its output captured (what a shell would see, without importing torch anew)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["abcrown-plugins", *args], code, out.getvalue(), err.getvalue())


def console(*args):
    """The installed entry point in a fresh interpreter (``python -m abcrown_plugins``)."""
    return subprocess.run([sys.executable, "-m", "abcrown_plugins", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("yaml_text,args,expected", [
    ("training:\n  epoch: 3\n", [], "did you mean 'training.epochs'"),
    ("training:\n  epochs: three\n", [], "training.epochs"),
    ("training:\n  epochs: [1\n", [], "invalid YAML"),
    ("", ["--training.epochs", "x"], "expected int"),
    ("data:\n  dataset: cifar10\n  root: /nonexistent\n", [], "cifar"),
    ("model:\n  arch: cnn_8layer\n", [], "did you mean 'cnn_7layer'"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, yaml_text, args, expected):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    r = cli("run", str(cfg), "--output", str(tmp_path / "o"), "--data.num_train", "64", *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith("abcrown-plugins: error:") and expected in lines[0]


def test_missing_config_file():
    r = console("run", "no/such/file.yaml")  # the console entry point itself, in a fresh process
    assert r.returncode == 2 and "not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_config_dump():
    r = cli("config", "--dump")
    assert r.returncode == 0
    assert "training:" in r.stdout and "  epochs: 10" in r.stdout and "Number of training epochs" in r.stdout


def test_bad_input_leaves_no_output_folder(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  arch: cnn_8layer\n")
    r = cli("run", str(cfg), "--output", str(tmp_path / "o"), "--data.num_train", "64")
    assert r.returncode == 2 and not (tmp_path / "o").exists()
