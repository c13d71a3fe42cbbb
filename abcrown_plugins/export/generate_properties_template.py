#!/usr/bin/env python3
"""Regenerate this benchmark's VNNLIB properties and instances.csv.

    python generate_properties.py SEED

Needs Python 3, numpy and onnxruntime, and the files of this folder only:
``benchmark.json`` (the settings), ``onnx/`` (the network) and ``data/`` (what the
properties are made of).

Drawn properties (the default): ``data/`` holds the test split the properties are
drawn from (``test_images.npy``, uint8 N x C x H x W, or float32 for data that is
not whole grey levels, and ``test_labels.npy``, int64 N, the labels of the task
the network classifies). SEED (an integer >= 0) picks which test images become
instances: the images are visited in the order of a permutation drawn by numpy's
default generator seeded with SEED; images the ONNX network misclassifies are
skipped (their property would be trivially sat); the first ``n`` that remain
become properties. A property is the L-inf ball of radius ``eps`` around the
image (clipped to [0,1]) and states the violation: some other logit is at least
the label's (``unsat`` means robust).

Copied properties (``"source": "vnnlib"`` in benchmark.json): the properties are
those of another VNN-COMP benchmark, copied box for box and label for label
(``data/box_lower.npy``, ``data/box_upper.npy``, float64 N x C x H x W, and
``data/test_labels.npy``); ``copied_from`` names the original files. With ``n``
equal to their number every one is written, in the original order, whatever
SEED; with fewer, SEED picks which (kept in the original order). None is skipped,
so two networks exported from the same benchmark answer the same questions.

``vnnlib_version`` in benchmark.json picks the file format: 1 (VNN-LIB 1.0, what
α,β-CROWN reads; the default) or 2 (VNN-LIB 2.0). Numbers are written as plain
decimals that read back to the same float64.

Nothing is half-written: the new VNNLIB files are written beside the old ones
(each atomically; a file's name and content depend only on the property), then
``instances.csv`` is replaced atomically (the commit), then the VNNLIB files it
no longer names are removed. A kill or a failure at any point leaves an
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
DATA_BOX_LOWER = "data/box_lower.npy"
DATA_BOX_UPPER = "data/box_upper.npy"
VNNLIB_VERSIONS = (1, 2)
_QUOTE = 80


class BenchmarkError(Exception):
    """A problem with this folder or the arguments, worded as one line that says how to fix it."""


def number(v: float) -> str:
    """``v`` as a plain decimal (no exponent: VNN-LIB 2.0 has none) that reads back to the same float64."""
    return np.format_float_positional(float(v), unique=True, trim="0")


def box_vnnlib(lower: np.ndarray, upper: np.ndarray, label: int, num_classes: int,
               input_shape: tuple[int, ...] | None = None, version: int = 1, comment: str = "") -> str:
    """VNNLIB text of the local-robustness property "the input box [lower, upper] keeps class ``label``".

    ``lower``/``upper``: the box, flattened in NCHW order (written exactly, as
    float64). States the violation ``(or (and (>= Y_j Y_label)) ...)`` over
    ``j != label`` (``unsat`` means robust). Version 1 declares ``X_0..X_{n-1}``
    and ``Y_0..Y_{K-1}``; version 2 declares one network ``N`` with input
    ``X float32 [1, *input_shape]`` (default ``[1, n]``) and output
    ``Y float32 [1, K]`` and indexes them ``X[0,c,h,w]``, ``Y[0,j]``.
    """
    lower = np.asarray(lower, dtype=np.float64).ravel()
    upper = np.asarray(upper, dtype=np.float64).ravel()
    n = lower.size
    shape = tuple(int(d) for d in (input_shape if input_shape is not None else (n,)))
    if upper.size != n or int(np.prod(shape)) != n or not 0 <= label < num_classes or version not in VNNLIB_VERSIONS:
        raise ValueError(f"box of {n}/{upper.size} values, shape {shape}, label {label} of {num_classes}, "
                         f"version {version}: inconsistent property")
    lines = [f"; {line}" for line in comment.splitlines()]
    if version == 1:
        xs = [f"X_{i}" for i in range(n)]
        ys = [f"Y_{j}" for j in range(num_classes)]
        lines.append("")
        lines += [f"(declare-const {x} Real)" for x in xs]
        lines.append("")
        lines += [f"(declare-const {y} Real)" for y in ys]
    else:
        index = np.unravel_index(np.arange(n), shape)
        xs = ["X[" + ",".join(["0"] + [str(int(axis[i])) for axis in index]) + "]" for i in range(n)]
        ys = [f"Y[0,{j}]" for j in range(num_classes)]
        lines += ["", "(vnnlib-version <2.0>)", "", "(declare-network N",
                  f"    (declare-input X float32 [{', '.join(str(d) for d in (1,) + shape)}])",
                  f"    (declare-output Y float32 [1, {num_classes}])", ")"]
    lines += ["", "; input box"]
    for i in range(n):
        lines.append(f"(assert (<= {xs[i]} {number(upper[i])}))")
        lines.append(f"(assert (>= {xs[i]} {number(lower[i])}))")
    lines += ["", "; violation: some other class scores at least the label"]
    lines.append("(assert (or")
    lines += [f"    (and (>= {ys[j]} {ys[label]}))" for j in range(num_classes) if j != label]
    lines.append("))")
    return "\n".join(lines) + "\n"


def robustness_vnnlib(flat: np.ndarray, label: int, eps: float, num_classes: int, data_min: float = 0.0,
                      data_max: float = 1.0, comment: str = "", input_shape: tuple[int, ...] | None = None,
                      version: int = 1) -> str:
    """VNNLIB text of the local-robustness property of the flattened image ``flat`` (pixels in [0,1]).

    The box is ``clip(x +- eps, data_min, data_max)`` rounded to float32 (what
    the network computes in); the rest is :func:`box_vnnlib`.
    """
    flat = np.asarray(flat, dtype=np.float64).ravel()
    lower = np.clip(flat - eps, data_min, data_max).astype(np.float32)
    upper = np.clip(flat + eps, data_min, data_max).astype(np.float32)
    head = f"local robustness: label {label}, L-inf eps {eps!r}, box clipped to [{data_min}, {data_max}]"
    return box_vnnlib(lower, upper, label, num_classes, input_shape, version,
                      f"{comment}\n{head}" if comment else head)


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
    if not isinstance(s, dict):
        raise BenchmarkError(f"'{path}' does not hold settings; export the benchmark again")
    copied = s.get("source", "draw") == "vnnlib"
    need = {"onnx": str, "dataset": str, "num_classes": int, "n": int, "timeout": (int, float)}
    if copied:
        need["copied_from"] = dict
    else:
        need["eps"] = (int, float)
    for key, kind in need.items():
        if not isinstance(s.get(key), kind) or isinstance(s.get(key), bool):
            raise BenchmarkError(f"'{path}' lacks a valid {key!r}; export the benchmark again")
    if not (s["n"] >= 1 and s["num_classes"] >= 2 and (copied or 0 <= s["eps"] < 1)
            and 0 < s["timeout"] < float("inf")):
        raise BenchmarkError(f"'{path}' has out-of-range settings (n, num_classes, eps or timeout); "
                             "export the benchmark again")
    if s.get("source", "draw") not in ("draw", "vnnlib") or s.get("vnnlib_version", 1) not in VNNLIB_VERSIONS:
        raise BenchmarkError(f"'{path}' has an unknown 'source' or 'vnnlib_version'; export the benchmark again")
    return s


def _load_array(folder: Path, name: str) -> np.ndarray:
    try:
        return np.load(folder / name, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise BenchmarkError(f"cannot read '{folder / name}' ({type(e).__name__}); export the benchmark "
                             "again") from None


def load_test_split(folder: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored test split: images N x C x H x W (uint8, or finite float32) and int64 labels in [0, num_classes)."""
    images, labels = _load_array(folder, DATA_IMAGES), _load_array(folder, DATA_LABELS)
    if images.dtype not in (np.uint8, np.float32) or images.ndim != 4 or not _labels_ok(labels, len(images),
                                                                                          num_classes) \
            or (images.dtype == np.float32 and not np.isfinite(images).all()):
        raise BenchmarkError(f"the test split under '{folder / 'data'}' is malformed; export the benchmark again")
    return images, labels.astype(np.int64)


def load_boxes(folder: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The copied properties: float64 boxes lower, upper (N x C x H x W) and int64 labels in [0, num_classes)."""
    lower, upper = _load_array(folder, DATA_BOX_LOWER), _load_array(folder, DATA_BOX_UPPER)
    labels = _load_array(folder, DATA_LABELS)
    if lower.dtype != np.float64 or upper.dtype != np.float64 or lower.ndim != 4 or lower.shape != upper.shape \
            or not _labels_ok(labels, len(lower), num_classes) or not (np.isfinite(lower).all()
                                                                       and np.isfinite(upper).all()) \
            or (lower > upper).any():
        raise BenchmarkError(f"the copied properties under '{folder / 'data'}' are malformed; export the benchmark "
                             "again")
    return lower, upper, labels.astype(np.int64)


def _labels_ok(labels: np.ndarray, n: int, num_classes: int) -> bool:
    return labels.ndim == 1 and labels.shape[0] == n and labels.dtype.kind in "iu" \
        and not (labels.size and (labels.min() < 0 or labels.max() >= num_classes))


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


def _slug(text: str) -> str:
    """``text`` with every character but letters, digits, ``.``, ``_`` and ``-`` replaced by ``_`` (a file name)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in text)


def _check_outputs(out: np.ndarray, k: int, what: str) -> None:
    if out.size != k:
        raise BenchmarkError(f"the ONNX network has {out.size} outputs but benchmark.json says {k} classes; "
                             "export the benchmark again")
    if not np.isfinite(out).all():
        raise BenchmarkError(f"the ONNX network gives non-finite logits on {what}; it cannot be "
                             "verified, export a finite network")


def draw(folder: str | Path, seed: int) -> list[int]:
    """(Re)draw the properties of the benchmark ``folder`` for ``seed``; returns the indices used.

    Module docstring: the order, the skipped images, copied properties, and the
    commit of the new files. Raises :class:`BenchmarkError` (nothing changed)
    when fewer than ``n`` images are classified correctly, or a file of the
    folder is missing or bad. The indices are of the test split, or of the
    copied properties.
    """
    folder = Path(folder)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BenchmarkError(f"SEED must be an integer >= 0, got {_quote(seed)}")
    s = load_settings(folder)
    version, k = int(s.get("vnnlib_version", 1)), int(s["num_classes"])
    if s.get("source", "draw") == "vnnlib":
        lower, upper, labels = load_boxes(folder, k)
        chosen, files = _copied(s, lower, seed)
        session = onnx_session(folder / s["onnx"])
        _check_outputs(logits(session, ((lower[0] + upper[0]) / 2).astype(np.float32)), k, "the first box centre")
        origin = s["copied_from"].get("folder", "another benchmark")
        shape = lower.shape[1:]
        texts = {idx: (files[idx], box_vnnlib(lower[idx], upper[idx], int(labels[idx]), k, shape, version,
                                              f"property copied from {origin}/{s['copied_from']['files'][idx]}: "
                                              f"the same input box and label"))
                 for idx in chosen}
    else:
        texts = _drawn(folder, s, seed, version, k)
    vnn_dir = folder / "vnnlib"
    vnn_dir.mkdir(exist_ok=True)
    for stale in vnn_dir.glob(".*.tmp"):  # left by a killed run
        stale.unlink(missing_ok=True)
    rows = []
    for name, text in texts.values():
        write_atomic(folder / name, text)
        rows.append(f"{s['onnx']},{name},{s['timeout']:g}")
    write_atomic(folder / "instances.csv", "\n".join(rows) + "\n")  # the commit
    named = {Path(r.split(",")[1]).name for r in rows}
    for old in vnn_dir.glob("*.vnnlib"):
        if old.name not in named:
            old.unlink(missing_ok=True)
    return list(texts)


def _copied(s: dict, lower: np.ndarray, seed: int) -> tuple[list[int], list[str]]:
    """The copied properties to write (all in order, or ``n`` chosen by ``seed``) and the file name of each."""
    total, n = len(lower), int(s["n"])
    names = s["copied_from"].get("files")
    if not isinstance(names, list) or len(names) != total or not all(isinstance(v, str) for v in names):
        raise BenchmarkError("benchmark.json's copied_from.files does not name every copied property; export the "
                             "benchmark again")
    if n > total:
        raise BenchmarkError(f"benchmark.json asks for {n} properties but {total} were copied; lower n to at most "
                             f"{total}")
    chosen = list(range(total)) if n == total else sorted(np.random.default_rng(seed).permutation(total)[:n].tolist())
    stems = [_slug(Path(v).name.removesuffix(".gz").removesuffix(".vnnlib")) for v in names]
    unique = len(set(stems)) == len(stems)
    files = [f"vnnlib/{stem if unique else f'{i}_{stem}'}.vnnlib" for i, stem in enumerate(stems)]
    return chosen, files


def _drawn(folder: Path, s: dict, seed: int, version: int, k: int) -> dict[int, tuple[str, str]]:
    """``{test index: (file, text)}`` of the drawn properties, in drawing order (module docstring)."""
    images, labels = load_test_split(folder, k)
    session = onnx_session(folder / s["onnx"])
    order = np.random.default_rng(seed).permutation(len(labels))
    eps, n = float(s["eps"]), int(s["n"])
    texts: dict[int, tuple[str, str]] = {}
    for idx in order.tolist():
        x = images[idx].astype(np.float32) / np.float32(255.0) if images.dtype == np.uint8 else images[idx]
        out = logits(session, x)
        _check_outputs(out, k, f"test image {idx}")
        if int(np.argmax(out)) != int(labels[idx]):
            continue
        name = f"vnnlib/{_slug(s['dataset'])}_idx{idx}_eps{eps:.6g}.vnnlib"
        texts[idx] = (name, robustness_vnnlib(x, int(labels[idx]), eps, k, comment=f"{s['dataset']} test image {idx}",
                                              input_shape=x.shape, version=version))
        if len(texts) == n:
            return texts
    raise BenchmarkError(f"only {len(texts)} of the {len(labels)} test images are classified correctly; "
                         f"lower --n to at most {len(texts)}")


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
