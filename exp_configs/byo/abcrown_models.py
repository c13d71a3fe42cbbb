"""α,β-CROWN's model definitions as zero-argument factories for ``model.arch: python:MODULE:FUNCTION``.

Nothing of α,β-CROWN is copied: its ``complete_verifier/model_defs.py`` is loaded from the
checkout named by ``ABCROWN_HOME`` when this module is imported (it is plain torch, so the
project's environment imports it). Used by ``exp_configs/byo/python_abcrown_resnet2b.yaml``::

    python exp_configs/byo/abcrown_models.py results/byo     # once: the npy folder and the weights

writes, from the checkout, ``results/byo/cifar/X.npy``, ``y.npy`` (the 200 CIFAR-10 test
images α,β-CROWN ships in ``datasets/sdp/cifar``, N x H x W x C floats in [0,1]),
``results/byo/cifar/train/`` (a copy, only for fine-tuning experiments: one-shot pruning
without training reads the test split only) and ``results/byo/resnet2b.pth`` (the shipped weights, as they are).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path


def _verifier_dir() -> Path:
    home = os.environ.get("ABCROWN_HOME")
    if not home:
        raise RuntimeError("set ABCROWN_HOME to an α,β-CROWN checkout (holding complete_verifier/model_defs.py)")
    return Path(home).expanduser() / "complete_verifier"


def _model_defs():
    path = _verifier_dir() / "model_defs.py"
    spec = importlib.util.spec_from_file_location("abcrown_model_defs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resnet2b():
    """CIFAR ResNet-2B (2 residual blocks, no BatchNorm); weights: models/cifar10_resnet/resnet2b.pth."""
    return _model_defs().resnet2b()


def resnet4b():
    """CIFAR ResNet-4B; weights: models/cifar10_resnet/resnet4b.pth."""
    return _model_defs().resnet4b()


def cnn_4layer_adv():
    """CIFAR CNN-A-Adv (SDP-FO); weights: models/sdp/cifar_cnn_a_adv.model (normalise with the SDP mean/std)."""
    return _model_defs().cnn_4layer_adv()


def prepare(out: Path) -> None:
    """The npy folder of α,β-CROWN's CIFAR sample and a copy of resnet2b's weights under ``out``."""
    import numpy as np

    d = _verifier_dir()
    data = out / "cifar"
    for folder in (data, data / "train"):
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "X.npy", np.load(d / "datasets/sdp/cifar/X_sdp.npy"))
        np.save(folder / "y.npy", np.load(d / "datasets/sdp/cifar/y_sdp.npy"))
    shutil.copyfile(d / "models/cifar10_resnet/resnet2b.pth", out / "resnet2b.pth")
    print(f"wrote {data}/X.npy, y.npy, train/ and {out / 'resnet2b.pth'}")


if __name__ == "__main__":
    prepare(Path(sys.argv[1] if len(sys.argv) > 1 else "results/byo"))
