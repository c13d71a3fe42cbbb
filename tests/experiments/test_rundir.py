"""The one output-folder rule and the run-folder claim; the config rules that span several keys."""

from pathlib import Path

import pytest

from abcrown_plugins.config import load_config
from abcrown_plugins.errors import UserError
from abcrown_plugins.experiments import claim_run_dir, run_dir


def test_output_folder_rule():
    cfg = load_config(None, [("general.name", "demo"), ("training.epochs", 3)])
    assert run_dir(cfg) == Path("results") / f"demo-{cfg.hash()}"
    assert run_dir(cfg, name="certify-net-abc123") == Path("results") / f"certify-net-abc123-{cfg.hash()}"
    assert run_dir(cfg.replace(output={"dir": "elsewhere"})) == Path("elsewhere")
    assert run_dir(cfg.replace(output={"dir": "elsewhere"}), "given") == Path("given")


def test_claim_accepts_the_same_run_and_refuses_others(tmp_path):
    cfg = load_config(None, [("training.epochs", 3)])
    out = tmp_path / "run"
    claim_run_dir(out, cfg, "pruning")
    assert (out / "config.yaml").is_file() and (out / "run.json").is_file()
    claim_run_dir(out, cfg, "pruning")  # a resumed run
    with pytest.raises(UserError, match="holds another run"):
        claim_run_dir(out, cfg.replace(training={"epochs": 4}), "pruning")
    with pytest.raises(UserError, match="holds another run"):
        claim_run_dir(out, cfg, "transfer")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        claim_run_dir(other, cfg, "pruning")


@pytest.mark.parametrize("overrides,expected", [
    ([("pruning.rewind", "early"), ("pruning.rewind_epoch", 4), ("training.epochs", 2)], "rewind_epoch 4"),
    ([("transfer.tasks", [])], "transfer.tasks is empty"),
    ([("transfer.group_shape", [4])], "two entries"),
    ([("transfer.tasks", ["dataset:svhn"])], "needs a pretrained base network"),
])
def test_rules_over_several_keys_fail_at_load(overrides, expected):
    with pytest.raises(UserError, match=expected):
        load_config(None, overrides)
