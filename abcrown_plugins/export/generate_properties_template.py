#!/usr/bin/env python3
"""Regenerate this benchmark's VNNLIB properties and instances.csv.

    python generate_properties.py SEED

Needs Python 3, numpy and onnxruntime, and the files of this folder only:
``benchmark.json`` (the settings), ``onnx/`` (the network) and ``data/`` (the test
split the properties are drawn from: ``test_images.npy``, uint8 N x C x H x W, and
``test_labels.npy``, int64 N, the labels of the task the network classifies).

SEED (an integer >= 0) picks which test images become instances: the images are
visited in the order of a permutation drawn by numpy's default generator seeded
with SEED; images the ONNX network misclassifies are skipped (their property
would be trivially sat); the first ``n`` that remain become properties. A
property is the L-inf ball of radius ``eps`` around the image (clipped to [0,1])
and states the violation: some other logit is at least the label's (``unsat``
means robust).

Nothing is half-written: the new VNNLIB files are written beside the old ones
(each atomically; a file's name and content depend only on the image and eps),
then ``instances.csv`` is replaced atomically (the commit), then the VNNLIB files
it no longer names are removed. A kill or a failure at any point leaves an
``instances.csv`` whose every line names complete files.

This file is written by abcrown-plugins (``export``), which draws its benchmarks
with the same code.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA_IMAGES = "data/test_images.npy"
DATA_LABELS = "data/test_labels.npy"
_QUOTE = 80


class BenchmarkError(Exception):
    """A problem with this folder or the arguments, worded as one line that says how to fix it."""


def _num(v: float) -> str:
    return repr(float(v))  # shortest round-trip repr: the box is written exactly


def robustness_vnnlib(flat: np.ndarray, label: int, eps: float, num_classes: int, data_min: float = 0.0,
                      data_max: float = 1.0, comment: str = "") -> str:
    """VNNLIB text of the local-robustness property of the flattened image ``flat`` (pixels in [0,1]).

    Declares ``X_0..X_{n-1}`` (NCHW order) and ``Y_0..Y_{K-1}``, bounds each input
    to ``clip(x +- eps)`` (rounded to float32) and asserts the violation
    ``(or (and (>= Y_j Y_label)) ...)`` over ``j != label``.
    """
    flat = np.asarray(flat, dtype=np.float64).ravel()
    lower = np.clip(flat - eps, data_min, data_max).astype(np.float32)
    upper = np.clip(flat + eps, data_min, data_max).astype(np.float32)
    lines = [f"; {line}" for line in comment.splitlines()]
    lines += [f"; local robustness: label {label}, L-inf eps {eps!r}, box clipped to [{data_min}, {data_max}]", ""]
    lines += [f"(declare-const X_{i} Real)" for i in range(flat.size)]
    lines.append("")
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_classes)]
    lines += ["", "; input box"]
    for i in range(flat.size):
        lines.append(f"(assert (<= X_{i} {_num(upper[i])}))")
        lines.append(f"(assert (>= X_{i} {_num(lower[i])}))")
    lines += ["", "; violation: some other class scores at least the label"]
    lines.append("(assert (or")
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(num_classes) if j != label]
    lines.append("))")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync, rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTE else text[:_QUOTE] + "..."


def load_settings(folder: Path) -> dict:
    """``benchmark.json``, checked for the keys this script reads."""
    path = folder / "benchmark.json"
    if not path.is_file():
        raise BenchmarkError(f"'{folder}' has no benchmark.json; it was not written by abcrown-plugins export")
    try:
        s = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"'{path}' is not readable JSON ({type(e).__name__}); export the benchmark "
                             "again") from None
    need = {"onnx": str, "dataset": str, "num_classes": int, "eps": (int, float), "n": int, "timeout": (int, float)}
    for key, kind in need.items():
        if not isinstance(s, dict) or not isinstance(s.get(key), kind) or isinstance(s.get(key), bool):
            raise BenchmarkError(f"'{path}' lacks a valid {key!r}; export the benchmark again")
    if not (s["n"] >= 1 and s["num_classes"] >= 2 and 0 <= s["eps"] < 1 and 0 < s["timeout"] < float("inf")):
        raise BenchmarkError(f"'{path}' has out-of-range settings (n, num_classes, eps or timeout); "
                             "export the benchmark again")
    return s


def load_test_split(folder: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored test split: uint8 images N x C x H x W and int64 labels in [0, num_classes)."""
    try:
        images = np.load(folder / DATA_IMAGES, allow_pickle=False)
        labels = np.load(folder / DATA_LABELS, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise BenchmarkError(f"cannot read the test split under '{folder / 'data'}' ({type(e).__name__}); "
                             "export the benchmark again") from None
    if images.dtype != np.uint8 or images.ndim != 4 or labels.ndim != 1 or labels.shape[0] != images.shape[0] \
            or labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise BenchmarkError(f"the test split under '{folder / 'data'}' is malformed; export the benchmark again")
    return images, labels.astype(np.int64)


def onnx_session(path: Path):
    """An onnxruntime CPU session of ``path``; an unreadable or invalid model is a BenchmarkError."""
    import onnxruntime as ort

    if not path.is_file():
        raise BenchmarkError(f"ONNX network '{path}' not found; export the benchmark again")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for every kind of bad file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BenchmarkError(f"'{path}' is not a valid ONNX network ({first[:_QUOTE]}); export the benchmark "
                             "again") from None


def logits(session, x: np.ndarray) -> np.ndarray:
    """The network's logits for one image (C x H x W float32), as a flat float64 array."""
    feed = {session.get_inputs()[0].name: x[None].astype(np.float32)}
    try:
        out = session.run(None, feed)[0]
    except Exception as e:  # noqa: BLE001 - a network whose input does not match the data
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BenchmarkError(f"the ONNX network cannot run on the stored images ({first[:_QUOTE]}); export the "
                             "benchmark again") from None
    return np.asarray(out, dtype=np.float64).ravel()


def parse_seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise BenchmarkError(f"SEED must be an integer >= 0, got {_quote(text)}") from None
    if seed < 0:
        raise BenchmarkError(f"SEED must be an integer >= 0, got {seed}")
    return seed


def draw(folder: str | Path, seed: int) -> list[int]:
    """(Re)draw the properties of the benchmark ``folder`` for ``seed``; returns the test indices used.

    Module docstring: the order, the skipped images, and the commit of the new
    files. Raises :class:`BenchmarkError` (nothing changed) when fewer than ``n``
    images are classified correctly, or a file of the folder is missing or bad.
    """
    folder = Path(folder)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BenchmarkError(f"SEED must be an integer >= 0, got {_quote(seed)}")
    s = load_settings(folder)
    images, labels = load_test_split(folder, s["num_classes"])
    session = onnx_session(folder / s["onnx"])
    order = np.random.default_rng(seed).permutation(len(labels))
    vnn_dir = folder / "vnnlib"
    vnn_dir.mkdir(exist_ok=True)
    for stale in vnn_dir.glob(".*.tmp"):  # left by a killed run
        stale.unlink(missing_ok=True)
    rows, used = [], []
    eps, n, k = float(s["eps"]), int(s["n"]), int(s["num_classes"])
    for idx in order.tolist():
        x = images[idx].astype(np.float32) / np.float32(255.0)
        out = logits(session, x)
        if out.size != k:
            raise BenchmarkError(f"the ONNX network has {out.size} outputs but benchmark.json says {k} classes; "
                                 "export the benchmark again")
        if not np.isfinite(out).all():
            raise BenchmarkError(f"the ONNX network gives non-finite logits on test image {idx}; it cannot be "
                                 "verified, export a finite network")
        if int(np.argmax(out)) != int(labels[idx]):
            continue
        name = f"vnnlib/{s['dataset'].replace(':', '_')}_idx{idx}_eps{eps:.6g}.vnnlib"
        write_atomic(folder / name, robustness_vnnlib(x, int(labels[idx]), eps, k,
                                                      comment=f"{s['dataset']} test image {idx}"))
        rows.append(f"{s['onnx']},{name},{s['timeout']:g}")
        used.append(idx)
        if len(used) == n:
            break
    if len(used) < n:
        raise BenchmarkError(f"only {len(used)} of the {len(labels)} test images are classified correctly; "
                             f"lower --n to at most {len(used)}")
    write_atomic(folder / "instances.csv", "\n".join(rows) + "\n")  # the commit
    named = {Path(r.split(",")[1]).name for r in rows}
    for old in vnn_dir.glob("*.vnnlib"):
        if old.name not in named:
            old.unlink(missing_ok=True)
    return used


def main(argv: list[str], folder: Path | None = None) -> int:
    """``generate_properties.py SEED``: exit 0, or 2 with one line on stderr."""
    folder = folder if folder is not None else Path(__file__).resolve().parent
    if len(argv) != 1:
        print("usage: python generate_properties.py SEED", file=sys.stderr)
        return 2
    try:
        seed = parse_seed(argv[0])
        used = draw(folder, seed)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write in '{folder}': {e.strerror or type(e).__name__}", file=sys.stderr)
        return 2
    print(f"wrote {len(used)} properties to {folder / 'vnnlib'} and {folder / 'instances.csv'} (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
