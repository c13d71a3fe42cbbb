"""A VNN-COMP benchmark folder from a checkpoint.

Layout written by :func:`export_benchmark`::

    DIR/onnx/NET.onnx            the network, normalisation inside, BN folded, masks folded
    DIR/vnnlib/PROP.vnnlib       one local-robustness property per drawn test image
    DIR/instances.csv            onnx/NET.onnx,vnnlib/PROP.vnnlib,TIMEOUT   (no header)
    DIR/generate_properties.py   `python generate_properties.py SEED` redraws the properties
    DIR/benchmark.json           the settings generate_properties.py reads

Properties are drawn by a seeded permutation of the test split; images the
ONNX network misclassifies are skipped (their property would be trivially
sat), so every instance is a real robustness question.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from abcrown_plugins.config.kinds import Eps, KindError
from abcrown_plugins.data import load_dataset
from abcrown_plugins.errors import UserError
from abcrown_plugins.export.onnx_io import export_onnx, onnx_session, run_onnx
from abcrown_plugins.export.vnnlib import write_robustness_vnnlib
from abcrown_plugins.fileio import atomic_write_text
from abcrown_plugins.models import load_model
from abcrown_plugins.runtime import progress

MAX_TOTAL_TIMEOUT_S = 6 * 3600
TEMPLATE = Path(__file__).with_name("generate_properties_template.py")


def parse_eps(text: str | float) -> float:
    try:
        return Eps().parse(text)
    except KindError as e:
        raise UserError(f"eps: {e}") from None


def export_benchmark(checkpoint: str | Path, out: str | Path, n: int, eps: float, seed: int, timeout: float = 60.0,
                     data_root: str | None = None, force: bool = False) -> dict[str, Any]:
    """Write a benchmark folder for ``checkpoint`` (a path or ``zoo:NAME``) at ``out``; returns a summary dict.

    The folder appears complete or not at all: it is built in a temporary
    sibling folder and renamed at the end.
    """
    out = Path(out)
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if timeout <= 0:
        raise UserError(f"--timeout must be positive, got {timeout}")
    if n * timeout > MAX_TOTAL_TIMEOUT_S:
        raise UserError(f"{n} instances x {timeout:g} s = {n * timeout / 3600:.1f} h exceeds VNN-COMP's 6 h per "
                        "benchmark; lower --n or --timeout")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"output folder '{out}' exists and is not empty; pass --force to replace it")
    loaded = load_model(checkpoint, compact=True)
    model, meta, compacted = loaded.model, loaded.meta, loaded.compacted
    shape = meta.input_shape
    net = f"{meta.arch}_{meta.dataset}" + ("_compact" if compacted else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        max_diff = export_onnx(model, tmp / "onnx" / f"{net}.onnx", shape)
        settings = {"onnx": f"onnx/{net}.onnx", "dataset": meta.dataset, "data_root": data_root,
                    "num_classes": meta.num_classes, "input_shape": list(shape), "eps": eps, "n": n,
                    "timeout": timeout, "checkpoint": str(loaded.path.resolve()), "compacted": compacted,
                    "onnx_max_abs_diff": max_diff}
        atomic_write_text(tmp / "benchmark.json", json.dumps(settings, indent=2) + "\n")
        shutil.copyfile(TEMPLATE, tmp / "generate_properties.py")
        os.chmod(tmp / "generate_properties.py", 0o755)
        drawn = generate_properties(tmp, seed)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**settings, "out": str(out), "instances": len(drawn), "seed": seed, "indices": drawn}


def generate_properties(folder: str | Path, seed: int) -> list[int]:
    """(Re)draw the properties of a benchmark folder; returns the test indices used.

    Draws test images in the order of a permutation seeded by ``seed``, keeps
    those the ONNX network classifies correctly, and stops at ``n``.
    """
    folder = Path(folder)
    settings_path = folder / "benchmark.json"
    if not settings_path.is_file():
        raise UserError(f"'{folder}' has no benchmark.json; it was not written by abcrown-plugins export")
    s = json.loads(settings_path.read_text())
    test = load_dataset(s["dataset"], "test", s.get("data_root"))
    session = onnx_session(folder / s["onnx"])
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(int(seed))).tolist()
    vnn_dir = folder / "vnnlib"
    if vnn_dir.exists():
        shutil.rmtree(vnn_dir)
    vnn_dir.mkdir()
    rows, used = [], []
    bar = progress(order, desc="draw properties", total=len(order))
    for idx in bar:
        x, y = test[idx]
        logits = run_onnx(session, x.unsqueeze(0).numpy())
        if int(np.argmax(logits)) != int(y):
            continue
        name = f"vnnlib/{s['dataset']}_idx{idx}_eps{s['eps']:.6g}.vnnlib"
        write_robustness_vnnlib(folder / name, x, int(y), float(s["eps"]), int(s["num_classes"]),
                                comment=f"{s['dataset']} test image {idx}, seed {seed}")
        rows.append(f"{s['onnx']},{name},{s['timeout']:g}")
        used.append(idx)
        if len(used) == int(s["n"]):
            break
    if hasattr(bar, "close"):
        bar.close()
    if len(used) < int(s["n"]):
        raise UserError(f"only {len(used)} of the {len(test)} test images are classified correctly; "
                        f"lower --n to at most {len(used)}")
    atomic_write_text(folder / "instances.csv", "\n".join(rows) + "\n")
    return used


def generate_properties_main(folder: Path, argv: Sequence[str]) -> int:
    """Entry point of a benchmark folder's generate_properties.py."""
    import sys

    if len(argv) != 1:
        print("usage: python generate_properties.py SEED", file=sys.stderr)
        return 2
    try:
        seed = int(argv[0])
    except ValueError:
        print(f"error: SEED must be an integer, got {argv[0]!r}", file=sys.stderr)
        return 2
    try:
        used = generate_properties(folder, seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(used)} properties to {folder / 'vnnlib'} and {folder / 'instances.csv'} (seed {seed})")
    return 0
