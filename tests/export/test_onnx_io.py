"""ONNX export's torch-vs-onnxruntime check: relative to the logits' scale, never passed by NaN."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

import model_zoo
from abcrown_plugins.data import dataset_info
from abcrown_plugins.errors import UserError
from abcrown_plugins.export import export_onnx
from abcrown_plugins.models import load_model, model_for

SHIPPED = sorted(p.stem for p in (Path(model_zoo.__file__).parent / "checkpoints").glob("*.pt"))


def test_there_are_shipped_checkpoints():
    assert "resnet_small_synthetic_slim" in SHIPPED and len(SHIPPED) >= 3


@pytest.mark.parametrize("compact", [False, True], ids=["dense", "compact"])
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_checkpoint_exports(tmp_path, name, compact):
    loaded = load_model(f"zoo:{name}", compact=compact)
    path = tmp_path / "net.onnx"
    worst = export_onnx(loaded.model, path, loaded.meta.input_shape)
    assert path.is_file() and 0 <= worst < 1e-3


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_network_is_refused_and_leaves_nothing(tmp_path, bad):
    model = model_for("cnn_small", dataset_info("synthetic")).eval()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = bad
    with pytest.raises(UserError, match="not finite"):
        export_onnx(model, tmp_path / "net.onnx", (3, 32, 32))
    assert os.listdir(tmp_path) == []


def test_a_real_disagreement_is_a_user_error(tmp_path):
    class Flaky(torch.nn.Module):
        """Differs between the traced graph and eager torch: exported, it computes x; eager, x + 1e-3."""

        def forward(self, x):
            out = x.flatten(1)[:, :3]
            return out if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() else out + 1e-3

    with pytest.raises(UserError, match="differ by"):
        export_onnx(Flaky(), tmp_path / "net.onnx", (3, 4, 4))
    assert os.listdir(tmp_path) == []


def test_exported_file_gets_a_new_files_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        export_onnx(model_for("cnn_small", dataset_info("synthetic")), tmp_path / "net.onnx", (3, 32, 32))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "net.onnx").st_mode) == 0o644
