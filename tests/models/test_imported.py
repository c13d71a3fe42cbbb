"""Bring your own network: onnx:PATH and python:MODULE:FUNCTION through run, checkpoints, verify and export."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from abcrown_plugins.cli.main import main
from abcrown_plugins.data import load_dataset
from abcrown_plugins.errors import UserError
from abcrown_plugins.models import load_model, start_model
from abcrown_plugins.models.imported import import_network
from tests.graph.nets import FACTORY_SOURCE, onnx_bytes, residual_net

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def info():
    return load_dataset("synthetic", "test", num=16).info


@pytest.fixture
def user_files(tmp_path):
    net = residual_net(size=32)
    (tmp_path / "usernet.py").write_text(FACTORY_SOURCE)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pth")
    (tmp_path / "net.onnx").write_bytes(onnx_bytes(net, SHAPE, fold=False))
    return tmp_path, net


def test_python_import_equals_the_users_module(user_files, info):
    folder, net = user_files
    imp = import_network(f"python:{folder / 'usernet.py'}:net", str(folder / "w.pth"), SHAPE, (0.0,) * 3,
                         (1.0,) * 3, 10)
    x = torch.rand(5, *SHAPE)
    torch.testing.assert_close(imp.model(x), net(x), atol=1e-5, rtol=1e-5)
    assert imp.source["kind"] == "python" and len(imp.source["sha256"]) == 64


def test_normalisation_is_folded_in_front(user_files):
    folder, net = user_files
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.5, 0.25)
    imp = import_network(f"onnx:{folder / 'net.onnx'}", None, SHAPE, mean, std, 10)
    x = torch.rand(3, *SHAPE)
    normed = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(imp.model(x), net(normed), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, ckpt, message", [
    ("python:{d}/usernet.py:nope", "w.pth", "has no function 'nope'"),
    ("python:{d}/usernet.py:net", None, "needs model.checkpoint"),
    ("python:{d}/missing.py:net", "w.pth", "does not exist"),
    ("python:{d}/usernet.py", "w.pth", "has no function 'usernet.py'|write python:MODULE:FUNCTION|cannot import"),
    ("onnx:{d}/net.onnx", "w.pth", "carries its own weights"),
    ("onnx:{d}/none.onnx", None, "cannot read"),
])
def test_import_errors_are_one_line(user_files, arch, ckpt, message):
    folder, _ = user_files
    with pytest.raises(UserError, match=message) as e:
        import_network(arch.format(d=folder), str(folder / ckpt) if ckpt else None, SHAPE, (0.0,) * 3, (1.0,) * 3)
    assert "\n" not in str(e.value)


def test_wrong_geometry_or_classes_is_refused(user_files):
    folder, _ = user_files
    with pytest.raises(UserError, match="takes inputs of shape \\(3, 32, 32\\).*\\(1, 28, 28\\)"):
        import_network(f"onnx:{folder / 'net.onnx'}", None, (1, 28, 28), (0.0,), (1.0,))
    with pytest.raises(UserError, match="gives 10 outputs but the data set has 4 classes"):
        import_network(f"onnx:{folder / 'net.onnx'}", None, SHAPE, (0.0,) * 3, (1.0,) * 3, 4)


def test_a_bad_state_dict_is_one_line(user_files):
    folder, _ = user_files
    torch.save({"c1.weight": torch.zeros(1)}, folder / "bad.pth")
    with pytest.raises(UserError, match="does not fit net\\(\\)"):
        import_network(f"python:{folder / 'usernet.py'}:net", str(folder / "bad.pth"), SHAPE, (0.0,) * 3, (1.0,) * 3)


def npy_folder(root, num_train: int = 128, num_test: int = 32):
    """The embedded synthetic images as α,β-CROWN-style arrays: NHWC uint8 training split, NCHW float test split."""
    root.mkdir()
    (root / "train").mkdir()
    train = load_dataset("synthetic", "train", num=num_train)
    test = load_dataset("synthetic", "test", num=num_test)
    np.save(root / "train" / "X.npy", train.images.permute(0, 2, 3, 1).numpy())
    np.save(root / "train" / "y.npy", train.labels.numpy())
    np.save(root / "X.npy", (test.images.float() / 255).numpy())
    np.save(root / "y.npy", test.labels.numpy())
    return root


def test_run_export_and_reopen_without_the_original_file(user_files, tmp_path, capsys):
    """One-shot channel pruning + a fine-tune epoch of an ONNX network on npy data; export; reopen without the file."""
    folder, net = user_files
    data = npy_folder(tmp_path / "npy")
    cfg = tmp_path / "byo.yaml"
    cfg.write_text(f"""
general: {{name: byo, seed: 0, progress: false}}
model: {{arch: "onnx:{folder / 'net.onnx'}"}}
data: {{dataset: "npy:{data}", batch_size: 64, mean: [0.4, 0.5, 0.6], std: [0.25, 0.25, 0.25]}}
training: {{method: standard, epochs: 0}}
pruning: {{method: slim, rounds: 1, channel_rate: 0.3, rewind: none, finetune_epochs: 1}}
verification: {{eps: 1/255, pgd_steps: 0}}
""")
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert rows[-1]["final"]["channel_remain_ratio"] < 1.0
    dense = load_model(out / "round_0" / "checkpoint.pt")
    assert dense.meta.mean == (0.4, 0.5, 0.6) and dense.meta.source["kind"] == "onnx"
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():  # round 0 did not train: the user's network behind the data set's normalisation
        mean = torch.tensor(dense.meta.mean).view(1, 3, 1, 1)
        std = torch.tensor(dense.meta.std).view(1, 3, 1, 1)
        torch.testing.assert_close(dense.model(x), net((x - mean) / std), atol=1e-5, rtol=1e-5)
    (folder / "net.onnx").unlink()
    pruned = load_model(out / "round_1" / "checkpoint.pt")
    small = load_model(out / "round_1" / "checkpoint.pt", compact=True)
    assert small.compacted
    assert sum(p.numel() for p in small.model.parameters()) < sum(p.numel() for p in pruned.model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(small.model(x), pruned.model(x), atol=1e-5, rtol=1e-5)
    bench = tmp_path / "bench"
    assert main(["export", "--checkpoint", str(out / "round_1" / "checkpoint.pt"), "--out", str(bench), "--n", "1",
                 "--eps", "1/255"]) == 0
    (onnx_file,) = list((bench / "onnx").rglob("*.onnx"))
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    xb = torch.rand(1, *SHAPE)
    got = sess.run(None, {sess.get_inputs()[0].name: xb.numpy()})[0]
    np.testing.assert_allclose(got, pruned.model(xb).detach().numpy(), atol=1e-5, rtol=1e-5)


def test_start_model_of_a_zoo_name_is_unchanged(info):
    net = start_model("cnn_small", None, info)
    assert not net.pretrained and net.meta.graph is None and net.model.input_shape == info.shape


def test_abcrown_hook_imports_the_users_network(user_files, info):
    from abcrown_plugins.abcrown.hooks import imported_model

    folder, net = user_files
    model = imported_model(f"onnx:{folder / 'net.onnx'}", "synthetic", mean=[0.0] * 3, std=[1.0] * 3)
    x = torch.rand(2, *SHAPE)
    torch.testing.assert_close(model(x), net(x), atol=1e-5, rtol=1e-5)


def test_exported_file_names_are_safe(user_files, info):
    from abcrown_plugins.checkpoints import ModelMeta

    folder, _ = user_files
    meta = ModelMeta.for_data(f"onnx:{folder / 'net.onnx'}", info, source={"kind": "onnx", "path": "/x/my net.onnx"})
    assert meta.net_name == "my_net" and meta.data_name == "synthetic"
    assert ModelMeta.for_data("cnn_small", info).replace(dataset="npy:/data/cifar sample").data_name == "npy_cifar_sample"


def test_eran_style_list_wrapped_state_dict_loads(user_files):
    folder, net = user_files
    torch.save({"state_dict": [net.state_dict()], "acc": 0.9}, folder / "eran.pth")
    imp = import_network(f"python:{folder / 'usernet.py'}:net", str(folder / "eran.pth"), SHAPE, (0.0,) * 3,
                         (1.0,) * 3, 10)
    x = torch.rand(2, *SHAPE)
    torch.testing.assert_close(imp.model(x), net(x), atol=1e-5, rtol=1e-5)


def test_one_shot_pruning_needs_no_training_split(user_files, tmp_path, capsys):
    """Magnitude pruning of a given network without training reads only the test split; fine-tuning needs train/."""
    folder, _ = user_files
    data = npy_folder(tmp_path / "npy")
    for f in (data / "train").iterdir():
        f.unlink()
    (data / "train").rmdir()
    cfg = tmp_path / "oneshot.yaml"
    cfg.write_text(f"""
general: {{name: oneshot, seed: 0, progress: false}}
model: {{arch: "onnx:{folder / 'net.onnx'}"}}
data: {{dataset: "npy:{data}"}}
training: {{method: standard, epochs: 0}}
pruning: {{method: magnitude, rounds: 1, rate: 0.5, rewind: none, finetune_epochs: 0, scope: conv+linear}}
verification: {{eps: 1/255, pgd_steps: 0}}
""")
    assert main(["run", str(cfg), "--output", str(tmp_path / "a")]) == 0
    final = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1]["final"]
    assert abs(final["weight_remain_ratio"] - 0.5) < 0.01
    assert main(["run", str(cfg), "--output", str(tmp_path / "b"), "--pruning.finetune_epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train" in err[0] and "X.npy" in err[0]


def test_the_differential_engine_refuses_imported_networks_in_one_line(user_files, info):
    from abcrown_plugins.differential import DifferentialEngine

    folder, _ = user_files
    base = import_network(f"onnx:{folder / 'net.onnx'}", None, SHAPE, (0.0,) * 3, (1.0,) * 3).model
    tuned = import_network(f"onnx:{folder / 'net.onnx'}", None, SHAPE, (0.0,) * 3, (1.0,) * 3).model
    with pytest.raises(UserError, match="differential engine knows the zoo's module layouts.*smoothing.engine dense"):
        DifferentialEngine(base, [tuned])
