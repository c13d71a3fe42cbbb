"""Typed checkpoint metadata: round trip, required keys, one loader from a checkpoint to a network."""

import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.checkpoints import ModelMeta, TaskInfo, TransferInfo
from abcrown_plugins.checkpoints.meta import MetaError
from abcrown_plugins.data import dataset_info
from abcrown_plugins.errors import UserError
from abcrown_plugins.models import load_model, model_for, model_meta


def _meta(**extra) -> ModelMeta:
    return model_meta("cnn_small", dataset_info("synthetic")).replace(**extra)


def test_round_trip_keeps_every_key():
    meta = _meta(metrics={"std_acc": 0.5}, round=2, config={"training": {"epochs": 1}}, history=[{"epoch": 1}],
                 task=TaskInfo(scenario="synthetic_attributes", base_dataset="synthetic", attribute="size"),
                 transfer=TransferInfo(base_checkpoint="/b.pt", run="unstructured-k0.04", pattern="unstructured",
                                       k=0.04, updated=10, total=100, classifier=["8.weight"]))
    plain = meta.to_dict()
    assert plain["config"] == {"training": {"epochs": 1}} and plain["history"] == [{"epoch": 1}]
    assert plain["transfer"]["k"] == 0.04 and plain["task"]["attribute"] == "size"
    back = ModelMeta.from_dict(plain)
    assert back == meta and back.to_dict() == plain
    assert back.input_shape == (3, 32, 32) and not back.task.multi_head


def test_missing_or_unknown_metadata_is_named():
    plain = _meta().to_dict()
    del plain["std"]
    with pytest.raises(MetaError, match=r"lacks metadata \['std'\]"):
        ModelMeta.from_dict(plain)
    bad = _meta().to_dict() | {"transfer": {"base_checkpoint": None, "run": "x", "surprise": 1}}
    with pytest.raises(MetaError, match="surprise"):
        ModelMeta.from_dict(bad)


def test_load_model_is_strict_and_compacts_only_when_asked(tmp_path):
    info = dataset_info("synthetic")
    net = model_for("cnn_small", info).eval()
    path = tmp_path / "c.pt"
    checkpoints.save_model_checkpoint(path, net.state_dict(), model_meta("cnn_small", info))
    loaded = load_model(path)
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded.model(x), net(x)) and not loaded.model.training
    assert loaded.meta.arch == "cnn_small" and loaded.path == path and not loaded.compacted
    assert not load_model(path, compact=True).compacted  # no channel masks: nothing to compact
    wrong = tmp_path / "wrong.pt"
    checkpoints.save_model_checkpoint(wrong, net.state_dict(), model_meta("cnn_7layer", info))
    with pytest.raises(UserError, match="do not fit model 'cnn_7layer'"):
        load_model(wrong)


def test_shipped_channel_pruned_checkpoint_compacts_with_equal_outputs():
    masked = load_model("zoo:resnet_small_synthetic_slim.pt")
    small = load_model("zoo:resnet_small_synthetic_slim.pt", compact=True)
    assert small.compacted and small.meta == masked.meta
    assert sum(p.numel() for p in small.model.parameters()) < sum(p.numel() for p in masked.model.parameters())
    x = torch.rand(4, *masked.meta.input_shape)
    torch.testing.assert_close(small.model(x), masked.model(x), atol=1e-5, rtol=0)
