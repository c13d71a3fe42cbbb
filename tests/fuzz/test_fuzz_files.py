"""Random and mutated bytes as checkpoints, ONNX networks, idx files, pickles and .npy arrays.

Every command that reads such a file ends with exit code 0 (the file happened to be
valid) or 2 and one error line, never a traceback, and leaves no half-written file.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abcrown_plugins.export import generate_properties_template as standalone

from .helpers import FUZZ, assert_clean_exit, assert_nothing_half_written, run_cli, tiny_checkpoint


@st.composite
def mutated(draw, original: bytes):
    """``original`` with a few bytes changed, a slice cut out, or cut short (or random bytes)."""
    kind = draw(st.sampled_from(["flip", "cut", "truncate", "random"]))
    data = bytearray(original)
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "truncate":
        return bytes(data[:draw(st.integers(0, len(data)))])
    if kind == "cut":
        a = draw(st.integers(0, len(data)))
        b = draw(st.integers(a, min(len(data), a + 64)))
        return bytes(data[:a] + data[b:])
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


def _fresh(root: Path) -> Path:
    folder = root / uuid.uuid4().hex[:10]
    folder.mkdir()
    return folder


# ------------------------------------------------------------------ checkpoints

_CKPT: dict[str, bytes] = {}


def _checkpoint_bytes(root: Path) -> bytes:
    if "synthetic" not in _CKPT:
        _CKPT["synthetic"] = tiny_checkpoint(root / "valid.pt").read_bytes()
    return _CKPT["synthetic"]


@pytest.fixture(scope="module")
def valid_checkpoint(fuzz_root):
    return _checkpoint_bytes(fuzz_root)


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_random_bytes_as_a_checkpoint(fuzz_root, valid_checkpoint, data):
    blob = data.draw(mutated(valid_checkpoint))
    folder = _fresh(fuzz_root)
    ckpt = folder / "net.pt"
    ckpt.write_bytes(blob)
    for argv in (["verify", "--checkpoint", str(ckpt), "--data.num_test", "4", "--verification.pgd_steps", "0",
                  "--general.progress", "false"],
                 ["export", "--checkpoint", str(ckpt), "--out", str(folder / "bench"), "--n", "1", "--eps", "1/255"],
                 ["certify", "--checkpoint", str(ckpt), "--output", str(folder / "cert"), "--general.progress",
                  "false", "--data.num_test", "2", "--smoothing.n0", "2", "--smoothing.n", "4",
                  "--smoothing.batch_size", "4", "--smoothing.radii", "[0]"]):
        code, err = run_cli(argv)
        assert_clean_exit(code, err, argv[:3])
    assert_nothing_half_written(folder)


# ------------------------------------------------------------------ ONNX and the benchmark folder

@pytest.fixture(scope="module")
def benchmark(fuzz_root, valid_checkpoint):
    ckpt = fuzz_root / "bench.pt"
    ckpt.write_bytes(valid_checkpoint)
    out = fuzz_root / "bench"
    code, err = run_cli(["export", "--checkpoint", str(ckpt), "--out", str(out), "--n", "1", "--eps", "1/255"])
    assert code == 0, err
    return out


def _copy(benchmark: Path, root: Path) -> Path:
    dst = _fresh(root) / "bench"
    shutil.copytree(benchmark, dst)
    return dst


def _redraw(folder: Path, seed: str) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = standalone.main([seed], folder)
    return code, err.getvalue()


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_random_bytes_as_the_onnx_network(fuzz_root, benchmark, data):
    onnx_file = next((benchmark / "onnx").glob("*.onnx"))
    blob = data.draw(mutated(onnx_file.read_bytes()))
    folder = _copy(benchmark, fuzz_root)
    next((folder / "onnx").glob("*.onnx")).write_bytes(blob)
    code, err = _redraw(folder, "3")
    assert_clean_exit(code, err, ["generate_properties.py", "3"])
    argv = ["vnncomp", "run", str(folder), "--out", str(folder.parent / "results")]
    code, err = run_cli(argv)
    assert_clean_exit(code, err, argv)
    assert_nothing_half_written(folder.parent)


@settings(FUZZ, max_examples=40)
@given(target=st.sampled_from([standalone.DATA_IMAGES, standalone.DATA_LABELS, "benchmark.json", "instances.csv"]),
       data=st.data(), seed=st.sampled_from(["0", "7", "-1", "x", "1e3", "99999999999999999999"]))
def test_random_bytes_as_the_stored_data_and_settings(fuzz_root, benchmark, target, data, seed):
    folder = _copy(benchmark, fuzz_root)
    (folder / target).write_bytes(data.draw(mutated((benchmark / target).read_bytes())))
    code, err = _redraw(folder, seed)
    assert_clean_exit(code, err, ["generate_properties.py", seed])
    if code == 0:  # a successful redraw names only complete properties
        for line in (folder / "instances.csv").read_text().splitlines():
            assert (folder / line.split(",")[1]).is_file()
    assert_nothing_half_written(folder)


# ------------------------------------------------------------------ data files: idx (MNIST) and pickles (CIFAR-10)

def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


MNIST_IMAGES = _idx(np.arange(4 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(4, 28, 28), 0x803)
MNIST_LABELS = _idx(np.array([0, 1, 2, 3], dtype=np.uint8), 0x801)


def _verify(folder: Path, root: Path) -> None:
    """``verify`` of ``folder``'s checkpoint on the data files under ``root``."""
    argv = ["verify", "--checkpoint", str(folder / "net.pt"), "--data.root", str(root), "--verification.pgd_steps",
            "0", "--general.progress", "false"]
    code, err = run_cli(argv)
    assert_clean_exit(code, err, argv)


def _net_dir(root: Path, dataset: str) -> Path:
    """A fresh folder with an untrained checkpoint (``net.pt``) of ``dataset``."""
    folder = _fresh(root)
    tiny_checkpoint(folder / "net.pt", dataset)
    return folder


@pytest.fixture(scope="module")
def mnist_dir(fuzz_root):
    return _net_dir(fuzz_root, "mnist")


@settings(FUZZ, max_examples=40)
@given(which=st.sampled_from(["images", "labels"]), compress=st.booleans(), data=st.data())
def test_random_bytes_as_mnist_idx_files(mnist_dir, which, compress, data):
    valid = MNIST_IMAGES if which == "images" else MNIST_LABELS
    blob = data.draw(mutated(gzip.compress(valid, mtime=0) if compress else valid))
    root = _fresh(mnist_dir)
    for name, payload in (("t10k-images-idx3-ubyte", MNIST_IMAGES), ("t10k-labels-idx1-ubyte", MNIST_LABELS)):
        suffix = ".gz" if compress else ""
        content = blob if (which in name) else (gzip.compress(payload, mtime=0) if compress else payload)
        (root / f"{name}{suffix}").write_bytes(content)
    _verify(mnist_dir, root)


PICKLED = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
                       | st.binary(max_size=16),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.binary(max_size=6)
                                                                                  | st.text(max_size=6), inner,
                                                                                  max_size=3), max_leaves=6)


@pytest.fixture(scope="module")
def cifar_dir(fuzz_root):
    return _net_dir(fuzz_root, "cifar10")


@settings(FUZZ, max_examples=40)
@given(kind=st.sampled_from(["object", "batch", "bytes"]), obj=PICKLED, data=st.data(),
       protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_random_pickles_as_a_cifar_batch(cifar_dir, kind, obj, data, protocol):
    if kind == "batch":  # a real batch's layout with a random piece swapped in
        batch = {b"labels": [0, 1], b"data": np.zeros((2, 3072), np.uint8)}
        batch[data.draw(st.sampled_from([b"labels", b"data", b"extra"]))] = obj
        blob = pickle.dumps(batch, protocol=protocol)
    elif kind == "object":
        blob = pickle.dumps(obj, protocol=protocol)
    else:
        blob = data.draw(mutated(pickle.dumps({b"labels": [1], b"data": np.ones((1, 3072), np.uint8)}, protocol=2)))
    root = _fresh(cifar_dir) / "cifar-10-batches-py"
    root.mkdir()
    (root / "test_batch").write_bytes(blob)
    _verify(cifar_dir, root.parent)
