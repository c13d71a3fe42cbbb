import os
import pickle

import pytest
import torch

from abcrown_plugins import checkpoints, fileio
from abcrown_plugins.errors import UserError


def test_roundtrip_and_weights_only(tmp_path):
    p = tmp_path / "c.pt"
    checkpoints.save_model_checkpoint(p, {"w": torch.ones(2)}, {"arch": "cnn_small", "dataset": "synthetic",
                                      "num_classes": 10, "channels": 3, "input_size": 32, "mean": [0.5],
                                      "std": [0.2], "metrics": {"acc": 0.5}}, {"w": torch.tensor([True, False])})
    payload = checkpoints.read_model_checkpoint(p)
    assert torch.equal(payload.state_dict["w"], torch.ones(2))
    assert payload.masks["w"].tolist() == [True, False]
    assert payload.meta.metrics["acc"] == 0.5
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(UserError, match="cannot be read safely"):
        checkpoints.load(p)


def test_failed_write_leaves_previous_file_intact(tmp_path):
    p = tmp_path / "c.pt"
    checkpoints.save(p, {"v": 1})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        fileio.atomic_write_bytes(p, boom)
    assert checkpoints.load(p) == {"v": 1}
    assert len(list(tmp_path.iterdir())) == 1


def test_not_a_model_checkpoint(tmp_path):
    p = tmp_path / "c.pt"
    checkpoints.save(p, {"v": 1})
    with pytest.raises(UserError, match="not an abcrown_plugins model checkpoint"):
        checkpoints.read_model_checkpoint(p)
    with pytest.raises(UserError, match="not found"):
        checkpoints.load(tmp_path / "missing.pt")


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoints.save(tmp_path / "c.pt", {"v": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o644


def test_zoo_prefix_names_shipped_checkpoints():
    payload = checkpoints.read_model_checkpoint("zoo:cnn_7layer_synthetic_pruned.pt")
    assert payload.meta.arch == "cnn_7layer"
    assert checkpoints.resolve("zoo:cnn_7layer_synthetic_pruned") == checkpoints.resolve(
        "zoo:cnn_7layer_synthetic_pruned.pt")  # the suffix may be left off
    with pytest.raises(UserError, match="not found"):
        checkpoints.read_model_checkpoint("zoo:no_such.pt")
    with pytest.raises(UserError, match="not found"):
        checkpoints.read_model_checkpoint("zoo:no_such")


META = {"arch": "cnn_small", "dataset": "synthetic", "num_classes": 10, "channels": 3, "input_size": 32,
        "mean": [0.5], "std": [0.2]}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["layers.0.weight", "layers.1.running_var"])
def test_non_finite_weight_or_buffer_is_refused_naming_the_tensor(tmp_path, bad, name):
    p = tmp_path / "c.pt"
    state = {"layers.0.weight": torch.ones(4, 3), "layers.1.running_var": torch.ones(4),
             "layers.1.num_batches_tracked": torch.tensor(3)}
    state[name].view(-1)[1] = bad
    checkpoints.save_model_checkpoint(p, state, META)
    with pytest.raises(UserError) as e:
        checkpoints.read_model_checkpoint(p)
    msg = str(e.value)
    assert f"'{name}'" in msg and "non-finite" in msg and "(1 of " in msg and "\n" not in msg


@pytest.mark.parametrize("field,value", [("eps", float("nan")), ("eps", float("inf")), ("eps", -0.1),
                                         ("mean", [float("nan")]), ("std", [0.0]), ("std", [float("inf")])])
def test_non_finite_metadata_is_refused(tmp_path, field, value):
    p = tmp_path / "c.pt"
    checkpoints.save(p, {"format": checkpoints.FORMAT, "state_dict": {"w": torch.ones(1)},
                         "meta": {**META, field: value}})
    with pytest.raises(UserError, match="malformed metadata"):
        checkpoints.read_model_checkpoint(p)
