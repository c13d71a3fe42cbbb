import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.config import build_config
from abcrown_plugins.data import load_dataset
from abcrown_plugins.models import model_for, model_meta
from abcrown_plugins.training import TrainSettings, train


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """A briefly trained cnn_small on synthetic, saved as a real checkpoint on disk."""
    train_set = load_dataset("synthetic", "train", num=512)
    torch.manual_seed(0)
    model = model_for("cnn_small", train_set.info)
    cfg = build_config({"training": {"epochs": 2}, "data": {"batch_size": 64}})
    train(model, train_set, TrainSettings.from_config(cfg), torch.device("cpu"))
    path = tmp_path_factory.mktemp("ckpt") / "cnn_small.pt"
    checkpoints.save_model_checkpoint(path, model.eval().state_dict(), model_meta("cnn_small", train_set.info))
    return path
