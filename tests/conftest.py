"""Shared CPU test base: seeded torch, small data sets, helpers for bounds checks."""

from __future__ import annotations

import os

import pytest
import torch

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _calibration_cache(tmp_path_factory):
    """Batch-size calibrations of the tests go to a temporary folder, not the user's cache."""
    if "ABCROWN_PLUGINS_CACHE" in os.environ:
        yield
        return
    os.environ["ABCROWN_PLUGINS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    os.environ.pop("ABCROWN_PLUGINS_CACHE", None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """A briefly trained cnn_small on synthetic, saved as a real checkpoint on disk."""
    from abcrown_plugins import checkpoints
    from abcrown_plugins.config import build_config
    from abcrown_plugins.data import load_dataset
    from abcrown_plugins.models import model_for, model_meta
    from abcrown_plugins.training import TrainSettings, train

    train_set = load_dataset("synthetic", "train", num=512)
    torch.manual_seed(0)
    model = model_for("cnn_small", train_set.info)
    cfg = build_config({"training": {"epochs": 2}, "data": {"batch_size": 64}})
    train(model, train_set, TrainSettings.from_config(cfg), torch.device("cpu"))
    path = tmp_path_factory.mktemp("ckpt") / "cnn_small.pt"
    checkpoints.save_model_checkpoint(path, model.eval().state_dict(), model_meta("cnn_small", train_set.info))
    return path


@pytest.fixture(scope="session")
def tiny_synthetic():
    """(train, test) of the embedded synthetic set, small."""
    from abcrown_plugins.data import load_dataset

    return load_dataset("synthetic", "train", num=256), load_dataset("synthetic", "test", num=128)


def randomize_batchnorm(model: torch.nn.Module, generator: torch.Generator | None = None) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (incl. negative gamma)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) * 3 - 1.5)
                m.bias.copy_(torch.rand(n, generator=generator) - 0.5)


def sample_box(lower: torch.Tensor, upper: torch.Tensor, n: int) -> torch.Tensor:
    """n points per box: uniform inside plus vertices (each coordinate at an end)."""
    u = torch.rand(n, *lower.shape)
    corners = torch.rand(n, *lower.shape) < 0.5
    u[: n // 2] = corners[: n // 2].float()
    return lower + (upper - lower) * u


def assert_within(values: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, tol: float = 1e-5) -> None:
    """Every value (S x ...) lies in [lower - tol, upper + tol] (tol scaled by magnitude)."""
    scale = 1 + torch.maximum(lower.abs(), upper.abs())
    below = (values < lower - tol * scale).sum().item()
    above = (values > upper + tol * scale).sum().item()
    assert below == 0 and above == 0, f"{below} values below, {above} above the bounds"
