"""The synthetic multi-attribute scenario, the transfer run end to end, (base, finetuned) pairs, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from abcrown_plugins.cli import main
from abcrown_plugins.config import load_config
from abcrown_plugins.data.synthetic import ATTRIBUTES
from abcrown_plugins.errors import UserError
from abcrown_plugins.experiments import load_pair, run_transfer
from abcrown_plugins.transfer import attribute_task, pretrain_set
from abcrown_plugins.transfer.scenario import check_attributes, multi_head_loss

ROOT = Path(__file__).resolve().parents[2]


def test_scenario_views_share_images_and_read_the_attributes(tiny_synthetic):
    train, _ = tiny_synthetic
    pre = pretrain_set(train, ["shape", "fg_color"])
    assert pre.heads == (("shape", 10), ("fg_color", 4)) and pre.num_outputs == 14
    assert torch.equal(pre.targets[:, 1], train.attributes["fg_color"])
    task = attribute_task(train, "size")
    assert task.info.num_classes == 2 and task.info.class_names == ATTRIBUTES["size"]
    assert torch.equal(task.labels, train.attributes["size"]) and task.images is train.images
    logits = torch.zeros(3, 14, requires_grad=True)
    loss = multi_head_loss(logits, pre.targets[:3], pre.heads)
    assert loss.item() == pytest.approx((torch.log(torch.tensor(10.0)) + torch.log(torch.tensor(4.0))).item() / 2)
    with pytest.raises(UserError, match="both pretrained"):
        check_attributes(["shape", "size"], ["size"])
    with pytest.raises(UserError, match="valid: shape"):
        check_attributes(["shap"], [])


def _cfg(tmp_path, **transfer):
    body = {"pretrain_epochs": 1, "epochs": 1, "tasks": ["position"], "patterns": ["groupwise"], "ratios": [0.04],
            "baselines": ["dense"], "rigl_interval": 2, "mask_batches": 1}
    body.update(transfer)
    cfg = load_config(None, [("general.progress", False), ("general.device", "cpu"), ("model.arch", "cnn_small"),
                             ("data.num_train", 256), ("data.num_test", 64), ("data.batch_size", 64),
                             ("training.noise_sigma", 0.25), ("smoothing.n0", 4), ("smoothing.n", 32),
                             ("smoothing.alpha", 0.01), ("smoothing.num_examples", 4), ("smoothing.batch_size", 32)]
                      + [(f"transfer.{k}", v) for k, v in body.items()])
    return cfg


@pytest.mark.slow
def test_transfer_run_writes_pairs_and_resumes(tmp_path, capsys):
    cfg = _cfg(tmp_path, frozen_prefix=1)
    out, rows = run_transfer(cfg, tmp_path / "out")
    assert [r["run"] for r in rows] == ["dense", "groupwise-k0.04"]
    sparse = rows[1]
    assert abs(sparse["updated_ratio"] - 0.04) < 0.002 and 0 < sparse["prefix_macs"] < 1
    assert rows[0]["prefix_macs"] == 0.0 and rows[0]["updated_ratio"] == 1.0
    assert 0 <= sparse["cert_acc"] <= 1 and sparse["cert_radius"] == 0.25
    assert "1 - alpha" in (out / "summary.md").read_text()
    ckpt = out / "position" / "groupwise-k0.04" / "checkpoint.pt"
    base, fine, masks, meta = load_pair(ckpt)
    t = meta.transfer
    assert Path(t.base_checkpoint) == (out / "pretrain" / "checkpoint.pt").resolve()
    assert t.pattern == "groupwise" and t.k == 0.04 and t.updated == sum(
        int(v.sum()) for k, v in masks.items() if k not in t.classifier)
    bs, fs = base.state_dict(), fine.state_dict()
    for name, m in masks.items():
        if name in t.classifier:
            assert m.all()
            continue
        assert torch.equal(fs[name][~m], bs[name][~m])  # bit for bit outside the mask
    assert not masks["1.weight"].any()  # frozen prefix
    for name in fs:
        if name not in masks and not name.startswith("10."):
            assert torch.equal(fs[name], bs[name])  # buffers (BN statistics, normalisation)
    # a finished run is read back, not recomputed
    mtime = ckpt.stat().st_mtime_ns
    out2, rows2 = run_transfer(cfg, tmp_path / "out")
    assert rows2 == rows and ckpt.stat().st_mtime_ns == mtime
    # another config in the same folder is refused
    with pytest.raises(UserError, match="another run"):
        run_transfer(_cfg(tmp_path, epochs=2), tmp_path / "out")
    # the downstream checkpoint certifies through the CLI on its own task
    assert main(["certify", "--checkpoint", str(ckpt), "--output", str(tmp_path / "cert"), "--general.progress",
                 "false", "--data.num_test", "64", "--smoothing.n0", "4", "--smoothing.n", "32",
                 "--smoothing.num_examples", "2", "--smoothing.alpha", "0.01"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["examples"] == 2
    # the base network is multi-head: certifying it is a clear error
    assert main(["certify", "--checkpoint", str(out / "pretrain" / "checkpoint.pt")]) == 2
    assert "multi-attribute base" in capsys.readouterr().err


def test_shipped_transfer_configs_load():
    for path in sorted((ROOT / "exp_configs" / "transfer").glob("*.yaml")):
        cfg = load_config(path)
        attrs = [x for x in cfg.transfer.tasks if not x.startswith("dataset:")]
        check_attributes(cfg.transfer.pretrain_attributes, attrs)
        assert all(0 < k <= 1 for k in cfg.transfer.ratios)
    assert (ROOT / "exp_configs" / "transfer" / "synthetic_full.yaml").is_file()
    assert load_config(ROOT / "exp_configs" / "transfer" / "synthetic_full.yaml").transfer.ratios == (
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)
