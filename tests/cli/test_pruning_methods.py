"""Every pruning method end to end through `abcrown-plugins run` on tiny synthetic settings."""

import csv
import json
from pathlib import Path

import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.cli import main
from abcrown_plugins.config import load_config
from abcrown_plugins.models import load_model
from abcrown_plugins.pruning import METHODS

ROOT = Path(__file__).resolve().parents[2]

TINY = """
general: {{name: tiny-{m}, progress: false}}
model: {{arch: cnn_small}}
data: {{dataset: synthetic, num_train: 128, num_test: 32, batch_size: 64}}
training: {{method: {t}, epochs: 1, eps_warmup_epochs: 0, eps_ramp_epochs: 1}}
pruning: {{method: {m}, rounds: 2, rate: 0.2, channel_rate: 0.2, score_epochs: 1, saliency_batches: 1}}
verification: {{eps: 2/255, pgd_steps: 2}}
"""


def rows_of(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def run(tmp_path, method, training="ibp", extra=()):
    cfg = tmp_path / f"{method}.yaml"
    cfg.write_text(TINY.format(m=method, t=training))
    out = tmp_path / f"out-{method}"
    assert main(["run", str(cfg), "--output", str(out), *extra]) == 0
    return cfg, out


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_end_to_end(method, tmp_path):
    training = "fgsm" if method in ("hydra", "imp_nrs") else "ibp"  # adversarial objective path too
    _, out = run(tmp_path, method, training)
    rows = rows_of(out / "summary.csv")
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    ratios = [float(r["remain_ratio"]) for r in rows]
    if METHODS[method].structure == "weights":
        assert ratios[0] == 1.0 and abs(ratios[1] - 0.8) < 1e-4 and abs(ratios[2] - 0.64) < 1e-4
    else:  # cnn_small: 48 channels; 48 - round(0.2*48) = 38; 38 - round(0.2*38) = 30
        assert ratios == [1.0, 38 / 48, 30 / 48]
        assert float(rows[2]["channel_remain_ratio"]) == pytest.approx(30 / 48)
    for r in rows:
        assert 0 <= float(r["verified_acc"]) <= float(r["pgd_acc"]) <= float(r["std_acc"]) <= 1
        assert float(r["verify_peak_mem_mib"]) >= 0 and r["verify_mem_how"] in ("rss_hwm", "ru_maxrss")
        for k in ("instability", "unstable_ratio", "instability_bn", "unstable_ratio_bn"):
            assert float(r[k]) >= 0
        assert r["lottery_ticket"] in ("True", "False")
    assert rows[0]["lottery_ticket"] == "False"
    best = json.loads((out / "best.json").read_text())
    assert best["metrics"]["verified_acc"] == max(float(r["verified_acc"]) for r in rows)
    payload = checkpoints.read_model_checkpoint(out / "round_2" / "checkpoint.pt")
    load_model(payload)  # folded weights load strictly
    prev = checkpoints.read_model_checkpoint(out / "round_1" / "checkpoint.pt").masks
    for k, m in payload.masks.items():
        assert not bool((m & ~prev[k]).any())  # masks only shrink
        assert (payload.state_dict[k][~m] == 0).all()


def test_resume_after_kill_gives_same_numbers_and_early_rewind(tmp_path):
    cfg, out = run(tmp_path, "hydra_nrs", "ibp", ["--pruning.rewind", "early", "--pruning.rewind_epoch", "1"])
    before = rows_of(out / "summary.csv")
    rewind = checkpoints.load(out / "rewind.pt")
    assert rewind["epoch"] == 1
    # rewinding to epoch 1 restores those weights exactly (masked), before round 1's training
    (out / "round_2" / "checkpoint.pt").unlink()
    assert main(["run", str(cfg), "--output", str(out), "--pruning.rewind", "early",
                 "--pruning.rewind_epoch", "1"]) == 0
    after = rows_of(out / "summary.csv")
    keys = ["round", "remain_ratio", "std_acc", "pgd_acc", "verified_acc", "instability", "train_acc"]
    assert [[r[k] for k in keys] for r in before] == [[r[k] for k in keys] for r in after]


def test_finetune_mode_runs_fewer_epochs(tmp_path):
    _, out = run(tmp_path, "imp", "standard", ["--pruning.rewind", "none", "--pruning.finetune_epochs", "0"])
    p0 = checkpoints.read_model_checkpoint(out / "round_0" / "checkpoint.pt")
    p1 = checkpoints.read_model_checkpoint(out / "round_1" / "checkpoint.pt")
    assert p1.meta.extra["history"] == []  # zero finetune epochs: the pruned dense weights themselves
    for k, m in p1.masks.items():
        assert torch.equal(p1.state_dict[k], p0.state_dict[k] * m)


def test_methods_command_lists_every_method(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name, m in METHODS.items():
        assert f"  {name}" in text and m.description in text
    assert "alias of imp" in text


def test_bad_method_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pruning:\n  method: hydraa\n")
    assert main(["run", str(cfg), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pruning.method" in err and "hydra_nrs" in err


@pytest.mark.parametrize("path", sorted((ROOT / "exp_configs" / "pruning").rglob("*.yaml"))
                         + [ROOT / "exp_configs" / "quickstart.yaml"], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_validates(path):
    cfg = load_config(path)
    assert cfg.pruning.rounds >= 0


def test_full_scale_configs_follow_seed_001():
    files = sorted((ROOT / "exp_configs" / "pruning").glob("*/*_*.yaml"))
    full = [f for f in files if f.parent.name != "synthetic"]
    assert len(full) == 3 * 2 * len(METHODS)
    for f in full:
        cfg = load_config(f)
        t = cfg.training
        assert cfg.model.arch == "cnn_7layer" and cfg.data.batch_size == 128 and t.grad_clip == 8.0
        assert t.epochs == 200 and t.lr_milestones == (140, 170) and cfg.pruning.rounds == 16
        assert cfg.pruning.rate == 0.2 and cfg.pruning.channel_rate == 0.11
        assert cfg.verification.num_examples == 200
        if f.name.startswith("adv_"):
            assert t.method == "fgsm" and t.optimizer == "sgd" and t.lr == 0.01 and t.weight_decay == 5e-4
        else:
            assert t.method == "crown-ibp" and t.optimizer == "adam" and t.lr == 0.001
    assert len(list((ROOT / "exp_configs" / "pruning" / "synthetic").glob("*.yaml"))) == len(METHODS)


def test_channel_pruned_checkpoint_exports_compacted(tmp_path):
    """A channel method's checkpoint carries its channel masks; export rebuilds the net smaller, same outputs."""
    import numpy as np

    from abcrown_plugins.export import onnx_session, run_onnx

    _, out = run(tmp_path, "slim", "standard")
    ckpt = out / "round_2" / "checkpoint.pt"
    payload = checkpoints.read_model_checkpoint(ckpt)
    kept = sum(int(v.sum()) for v in payload.channel_masks.values())
    assert kept == 30  # 48 channels, two rounds at channel_rate 0.2
    masked = load_model(payload).model
    loaded = load_model(payload, compact=True)
    small, compacted = loaded.model, loaded.compacted
    assert compacted and sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in masked.parameters())
    bench = tmp_path / "bench"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(bench), "--n", "1", "--eps", "2/255"]) == 0
    onnx_file = next((bench / "onnx").glob("*_compact.onnx"))
    x = torch.rand(4, 1, 3, 32, 32)
    session = onnx_session(onnx_file)
    for xi in x:
        np.testing.assert_allclose(run_onnx(session, xi.numpy()), masked(xi).detach().numpy(), atol=1e-5, rtol=0)
