"""The α,β-CROWN randomized-smoothing hook: in-process on hand-built vnnlib, and in the real α,β-CROWN."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import model_zoo
from abcrown_plugins import checkpoints
from abcrown_plugins.export.onnx_io import export_onnx
from abcrown_plugins.abcrown.smoothing import certify_instance, label_from_spec
from abcrown_plugins.models import model_meta
from abcrown_plugins.smoothing import certify, max_certifiable_radius

SHAPE = (1, 28, 28)
CLASSES = 3
SETTINGS = {"sigma": 0.25, "n0": 10, "n": 200, "alpha": 0.001, "batch_size": 100}


def _net() -> torch.nn.Module:
    """A small zoo CNN whose smoothed prediction is class 0 everywhere: big bias, tiny weights."""
    torch.manual_seed(3)
    m = model_zoo.build_model("cnn_small", in_channels=1, input_size=28, num_classes=CLASSES,
                              mean=(0.5,), std=(0.25,)).eval()
    last = m[-1]
    with torch.no_grad():
        last.weight.mul_(1e-3)
        last.bias.copy_(torch.tensor([20.0, 0.0, -1.0]))
    return m


def _spec(label: int) -> list:
    """VNNLIB violation 'some Y_j >= Y_label' as α,β-CROWN parses it: one OR-term per j, Y_label - Y_j <= 0."""
    terms = []
    for j in range(CLASSES):
        if j != label:
            row = np.zeros((1, CLASSES))
            row[0, label], row[0, j] = 1.0, -1.0
            terms.append((row, np.zeros(1)))
    return terms


def _box(x: torch.Tensor, eps: float) -> list:
    flat = x.flatten().double()
    return np.stack([(flat - eps).clamp(0, 1).numpy(), (flat + eps).clamp(0, 1).numpy()], 1).tolist()


def test_label_from_spec():
    assert label_from_spec(_spec(2)) == 2
    assert label_from_spec(_spec(0)) == 0
    with pytest.raises(ValueError):
        label_from_spec([(np.array([[1.0, -1.0, 0.0]]), np.array([0.5]))])  # rhs != 0: not robustness
    with pytest.raises(ValueError):
        label_from_spec(_spec(0) + _spec(1))  # no common label


def test_hook_in_process_safe_only_for_the_certified_label(tmp_path):
    net = _net()
    x = torch.full(SHAPE, 0.5)
    box = _box(x, 2 / 255)  # centre is x up to rounding of the clipped box
    logs = []
    common = dict(radius=0.25, input_shape=list(SHAPE), log=logs.append, **SETTINGS)
    assert certify_instance(net, [(box, _spec(0))], None, **common) == "safe"
    assert certify_instance(net, [(box, _spec(1))], None, **common) == "unknown"
    # a radius out of reach of n and alpha is never certified
    top = max_certifiable_radius(SETTINGS["n"], SETTINGS["alpha"], SETTINGS["sigma"])
    assert certify_instance(net, [(box, _spec(0))], None, **{**common, "radius": top + 0.01}) == "unknown"
    assert all("probability >= 1 - alpha = 0.999" in line for line in logs)
    assert "label 0" in logs[0] and ": safe;" in logs[0] and ": unknown;" in logs[1]
    # the hook's radius is the certifier's on the box centre
    centre = torch.tensor(np.asarray(box).mean(1), dtype=torch.float32).view(SHAPE)
    m = re.search(r"certified L2 radius ([0-9.]+)", logs[0])
    direct = certify(net, centre, SETTINGS["n0"], SETTINGS["n"], SETTINGS["alpha"], SETTINGS["sigma"], CLASSES,
                     SETTINGS["batch_size"], torch.Generator().manual_seed(1))
    assert float(m.group(1)) == pytest.approx(direct.radius, abs=1e-4)
    # the network can also come from a project checkpoint (shape from its metadata)
    ckpt = tmp_path / "net.pt"
    info = type("Info", (), {"name": "synthetic_gray", "num_classes": CLASSES, "channels": 1, "size": 28,
                             "mean": (0.5,), "std": (0.25,)})
    checkpoints.save_model_checkpoint(ckpt, net.state_dict(), model_meta("cnn_small", info))
    assert certify_instance(None, [(box, _spec(0))], None, radius=0.25, checkpoint=str(ckpt), log=logs.append,
                            **SETTINGS) == "safe"
    # a non-robustness spec or a missing network is unknown, with the reason logged
    bad = [(np.array([[1.0, 0.0, 0.0]]), np.array([3.0]))]
    assert certify_instance(net, [(box, bad)], None, **common) == "unknown"
    assert certify_instance(None, [(box, _spec(0))], None, radius=0.25, log=logs.append, **SETTINGS) == "unknown"
    assert "not local robustness" in logs[-2] and "no network" in logs[-1]


def _write_benchmark(folder: Path) -> None:
    net = _net()
    (folder / "onnx").mkdir(parents=True)
    (folder / "vnnlib").mkdir()
    export_onnx(net, folder / "onnx" / "net.onnx", SHAPE)  # the project's export: checked, initializers only
    rows = []
    for i, label in enumerate((0, 1)):
        x = torch.full(SHAPE, 0.3 + 0.2 * i)
        lines = [f"(declare-const X_{k} Real)" for k in range(x.numel())]
        lines += [f"(declare-const Y_{j} Real)" for j in range(CLASSES)]
        for k, (lo, hi) in enumerate(_box(x, 1 / 255)):
            lines += [f"(assert (<= X_{k} {hi:.8f}))", f"(assert (>= X_{k} {lo:.8f}))"]
        terms = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(CLASSES) if j != label)
        lines.append(f"(assert (or {terms}))")
        (folder / "vnnlib" / f"prop_{i}.vnnlib").write_text("\n".join(lines) + "\n")
        rows.append(f"onnx/net.onnx,vnnlib/prop_{i}.vnnlib,60")
    (folder / "instances.csv").write_text("\n".join(rows) + "\n")


def _abcrown() -> tuple[Path, Path] | None:
    home, python = os.environ.get("ABCROWN_HOME"), os.environ.get("ABCROWN_PYTHON")
    if not home or not python or not Path(home, "complete_verifier", "abcrown.py").is_file() or not Path(python).is_file():
        return None
    return Path(home), Path(python)


@pytest.mark.external
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy ONNX exporter, used on purpose
def test_hook_runs_in_real_abcrown(tmp_path):
    found = _abcrown()
    if found is None:
        pytest.skip("α,β-CROWN not found: set ABCROWN_HOME (checkout) and ABCROWN_PYTHON (its interpreter)")
    home, python = found
    bench = tmp_path / "bench"
    _write_benchmark(bench)
    kwargs = ", ".join(f"{k}={v}" for k, v in SETTINGS.items())
    hook = (f'Customized("abcrown_plugins.abcrown.smoothing", "certify_instance", radius=0.25, {kwargs}, '
            f'input_shape=[1, 28, 28])')
    template = (Path(__file__).resolve().parents[2] / "exp_configs" / "smoothing.yaml").read_text()
    config = template.replace("root_path: results/smoothing_benchmark", f"root_path: {bench}")
    config = re.sub(r"complete_verifier: .*", f"complete_verifier: '{hook}'", config)
    assert str(bench) in config and "radius=0.25" in config
    (tmp_path / "config.yaml").write_text(config)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(python), "abcrown.py", "--config", str(tmp_path / "config.yaml"), "--device", "cpu"],
                          cwd=home / "complete_verifier", capture_output=True, text=True, timeout=240, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    results = re.findall(r"^Result: (\S+)", out, flags=re.M)
    assert results == ["safe", "unknown"], out[-3000:]
    assert out.count("holds with probability >= 1 - alpha = 0.999") == 2
