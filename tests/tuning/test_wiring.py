"""smoothing.batch_size and verification.batch_size: null measures, a number overrides, and neither changes
a certificate or a verified accuracy; the size used is recorded."""

from __future__ import annotations

import json

import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.cli import main
from abcrown_plugins.config import build_config, default_config
from abcrown_plugins.data import load_dataset
from abcrown_plugins.errors import UserError
from abcrown_plugins.models import model_for, model_meta
from abcrown_plugins.smoothing.run import CERTIFY_CANDIDATES, SmoothingSettings, certify_example, read_tsv
from abcrown_plugins.verification.evaluate import VERIFY_CANDIDATES, evaluate


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ABCROWN_PLUGINS_CACHE", str(tmp_path / "cache"))


def test_config_null_means_measure_and_a_number_overrides():
    cfg = default_config()
    assert cfg.smoothing.batch_size is None and cfg.verification.batch_size is None
    cfg = build_config({"smoothing": {"batch_size": 64}}, [("verification.batch_size", 32)])
    assert cfg.smoothing.batch_size == 64 and cfg.verification.batch_size == 32
    assert SmoothingSettings.from_config(cfg).batch_size == 64
    assert SmoothingSettings.from_config(default_config()).batch_size is None
    for section in ("smoothing", "verification"):
        with pytest.raises(UserError, match=f"{section}.batch_size"):
            build_config({section: {"batch_size": 0}})


def _net(info):
    torch.manual_seed(1)
    return model_for("cnn_small", info).eval()


def test_measured_batch_size_gives_the_rows_of_any_fixed_one():
    data = load_dataset("synthetic", "test", num=4)
    net = _net(data.info)
    measured = SmoothingSettings(sigma=0.25, n0=20, n=1300, alpha=0.01, batch_size=None)
    with torch.no_grad():
        rows = [certify_example(net, data, i, measured, seed=5) for i in range(2)]
        for b in (7, 1000):
            fixed = SmoothingSettings(sigma=0.25, n0=20, n=1300, alpha=0.01, batch_size=b)
            again = [certify_example(net, data, i, fixed, seed=5) for i in range(2)]
            assert [{k: r[k] for k in r if k != "time"} for r in again] == \
                   [{k: r[k] for k in r if k != "time"} for r in rows]


def test_verified_accuracy_does_not_depend_on_the_batch_and_the_measured_size_is_recorded():
    data = load_dataset("synthetic", "test", num=100)
    net = _net(data.info)
    measured = evaluate(net, data, 2 / 255, batch_size=None)
    fixed = evaluate(net, data, 2 / 255, batch_size=7)
    assert measured.batch_size in VERIFY_CANDIDATES and fixed.batch_size == 7
    assert (measured.std_acc, measured.verified_acc) == (fixed.std_acc, fixed.verified_acc)
    assert measured.unstable_ratio == pytest.approx(fixed.unstable_ratio, rel=1e-6)


def test_certify_run_records_the_batch_size_and_writes_the_rows_of_a_fixed_one(tmp_path):
    info = load_dataset("synthetic", "test", num=16).info
    ckpt = tmp_path / "net.pt"
    checkpoints.save_model_checkpoint(ckpt, _net(info).state_dict(), model_meta("cnn_small", info))
    common = ["--general.progress", "false", "--data.num_test", "16", "--smoothing.n0", "10", "--smoothing.n",
              "1200", "--smoothing.num_examples", "2", "--smoothing.radii", "[0]"]
    assert main(["certify", "--checkpoint", str(ckpt), "--output", str(tmp_path / "auto"), *common]) == 0
    assert main(["certify", "--checkpoint", str(ckpt), "--output", str(tmp_path / "fixed"), *common,
                 "--smoothing.batch_size", "300"]) == 0
    auto = json.loads((tmp_path / "auto" / "batch_size.json").read_text())
    assert auto["measured"] and auto["smoothing.batch_size"] in {min(c, 1200) for c in CERTIFY_CANDIDATES}  # <= n
    assert auto["calibration"]["batch_size"] == auto["smoothing.batch_size"]
    fixed = json.loads((tmp_path / "fixed" / "batch_size.json").read_text())
    assert {k: fixed[k] for k in ("smoothing.batch_size", "measured", "calibration")} == \
           {"smoothing.batch_size": 300, "measured": False, "calibration": None}
    assert auto["layout"] in ("nchw", "channels_last") and fixed["layout"] in ("nchw", "channels_last")
    rows = [read_tsv(tmp_path / d / "certify.tsv")[1] for d in ("auto", "fixed")]
    assert [{k: r[k] for k in r if k != "time"} for r in rows[0]] == \
           [{k: r[k] for k in r if k != "time"} for r in rows[1]]
