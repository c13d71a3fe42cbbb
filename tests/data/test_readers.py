"""Tests of the real data set readers on tiny files written in the official formats."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from abcrown_plugins.data import dataset_info, load_dataset
from abcrown_plugins.errors import UserError


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------- CIFAR-10


def _write_cifar(folder: Path, sizes: dict[str, int], protocol: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write CIFAR-10 python batches (dicts with bytes keys, like the official files)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for index, (name, n) in enumerate(sizes.items()):
        data = _rng(index).integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in _rng(100 + index).integers(0, 10, size=n)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle, protocol=protocol)
        written[name] = (data, labels)
    return written


CIFAR_TRAIN = {f"data_batch_{i}": 3 + i for i in range(1, 6)}


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_train_read_back_exactly(tmp_path: Path, protocol: int) -> None:
    written = _write_cifar(tmp_path / "cifar-10-batches-py", CIFAR_TRAIN, protocol)
    data = load_dataset("cifar10", "train", root=str(tmp_path))
    expected_images = np.concatenate([written[name][0] for name in CIFAR_TRAIN]).reshape(-1, 3, 32, 32)
    expected_labels = [label for name in CIFAR_TRAIN for label in written[name][1]]
    assert data.images.dtype == torch.uint8 and data.images.shape == (len(expected_labels), 3, 32, 32)
    assert np.array_equal(data.images.numpy(), expected_images)
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == expected_labels
    assert data.attributes == {}
    assert data.info == dataset_info("cifar10")


def test_cifar10_test_split_with_root_pointing_at_the_batches_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    written = _write_cifar(folder, {"test_batch": 12})
    data = load_dataset("cifar10", "test", root=str(folder))
    assert np.array_equal(data.images.numpy().reshape(12, -1), written["test_batch"][0])
    assert data.labels.tolist() == written["test_batch"][1]


def test_cifar10_missing_files_name_the_file_and_the_folders(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py", {"test_batch": 4})
    with pytest.raises(UserError) as error:
        load_dataset("cifar10", "train", root=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert "data_batch_1" in message and "data_batch_5" in message
    assert str((tmp_path / "cifar-10-batches-py").resolve()) in message
    assert "data.root" in message and "cifar10" in message


class _Exploit:
    """Pickles as a call to ``open(path, "w")``: loading it must not create ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_cifar10_pickle_cannot_run_code(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with (folder / "test_batch").open("wb") as handle:
        pickle.dump({b"data": _Exploit(sentinel), b"labels": [0]}, handle, protocol=2)
    with pytest.raises(UserError, match="not allowed"):
        load_dataset("cifar10", "test", root=str(tmp_path))
    assert not sentinel.exists()


def test_cifar10_corrupt_batch_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00(garbage")
    with pytest.raises(UserError, match="test_batch"):
        load_dataset("cifar10", "test", root=str(tmp_path))
    with (folder / "test_batch").open("wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, handle, protocol=2)
    with pytest.raises(UserError, match="3072"):
        load_dataset("cifar10", "test", root=str(tmp_path))


# ---------------------------------------------------------------- MNIST (idx)


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_idx(folder: Path, split: str, n: int, compress: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    images = _rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.tile(np.arange(10, dtype=np.uint8), n // 10 + 1)[:n]
    for name, payload in (
        (f"{prefix}-images-idx3-ubyte", _idx_bytes(images, 0x803)),
        (f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels, 0x801)),
    ):
        if compress:
            with gzip.open(folder / f"{name}.gz", "wb") as handle:
                handle.write(payload)
        else:
            (folder / name).write_bytes(payload)
    return images, labels


@pytest.mark.parametrize(
    ("name", "subdir", "compress"),
    [
        ("mnist", "MNIST/raw", True),
        ("mnist", "", False),
        ("fashion_mnist", "FashionMNIST/raw", False),
        ("fashion_mnist", "", True),
    ],
)
def test_mnist_formats_read_back_exactly(tmp_path: Path, name: str, subdir: str, compress: bool) -> None:
    images, labels = _write_idx(tmp_path / subdir if subdir else tmp_path, "test", 30, compress)
    data = load_dataset(name, "test", root=str(tmp_path))
    assert data.images.shape == (30, 1, 28, 28) and data.images.dtype == torch.uint8
    assert np.array_equal(data.images[:, 0].numpy(), images)
    assert data.labels.dtype == torch.int64 and np.array_equal(data.labels.numpy(), labels)
    assert data.info.name == name and data.info.channels == 1


def test_mnist_num_takes_a_stratified_subset(tmp_path: Path) -> None:
    images, _ = _write_idx(tmp_path / "MNIST" / "raw", "train", 100, compress=True)
    data = load_dataset("mnist", "train", root=str(tmp_path), num=20, seed=1)
    assert len(data) == 20
    assert torch.bincount(data.labels, minlength=10).tolist() == [2] * 10
    rows = {image.tobytes() for image in images}
    assert all(image.numpy().tobytes() in rows for image in data.images[:, 0])


def test_mnist_bad_magic_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "MNIST" / "raw"
    _write_idx(folder, "test", 10, compress=False)
    path = folder / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[3] = 0x01  # claims 1 dimension
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as error:
        load_dataset("mnist", "test", root=str(tmp_path))
    message = str(error.value)
    assert "magic" in message and "t10k-images-idx3-ubyte" in message and "\n" not in message


def test_mnist_truncated_file_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "FashionMNIST" / "raw"
    _write_idx(folder, "train", 10, compress=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UserError, match="data bytes"):
        load_dataset("fashion_mnist", "train", root=str(tmp_path))


def test_mnist_missing_files_name_the_files(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        load_dataset("fashion_mnist", "test", root=str(tmp_path))
    message = str(error.value)
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert str((tmp_path / "FashionMNIST" / "raw").resolve()) in message and "data.root" in message


# -------------------------------------------------------------------------- SVHN


@pytest.mark.parametrize("subdir", ["", "svhn"])
def test_svhn_read_back_exactly_with_label_10_as_0(tmp_path: Path, subdir: str) -> None:
    from scipy.io import savemat

    folder = tmp_path / subdir if subdir else tmp_path
    folder.mkdir(exist_ok=True)
    x = _rng(3).integers(0, 256, size=(32, 32, 3, 15), dtype=np.uint8)
    y = np.array([[1 + i % 10] for i in range(15)], dtype=np.uint8)  # 1..10, 10 meaning digit 0
    savemat(folder / "train_32x32.mat", {"X": x, "y": y})
    data = load_dataset("svhn", "train", root=str(tmp_path))
    assert data.images.shape == (15, 3, 32, 32) and data.images.dtype == torch.uint8
    assert np.array_equal(data.images.numpy(), x.transpose(3, 2, 0, 1))
    assert data.labels.tolist() == [(1 + i % 10) % 10 for i in range(15)]


def test_svhn_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="test_32x32.mat"):
        load_dataset("svhn", "test", root=str(tmp_path))


# -------------------------------------------------------------------- metadata


def test_standard_normalisation_constants() -> None:
    assert dataset_info("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert dataset_info("cifar10").std == (0.2471, 0.2435, 0.2616)
    assert dataset_info("mnist").mean == (0.1307,) and dataset_info("mnist").std == (0.3081,)
    assert dataset_info("fashion_mnist").mean == (0.2860,) and dataset_info("fashion_mnist").std == (0.3530,)
    assert dataset_info("svhn").std == (0.1980, 0.2010, 0.1970)
    assert dataset_info("svhn").class_names[0] == "0" and dataset_info("cifar10").class_names[9] == "truck"


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UserError) as error:
        load_dataset("fashion-mnist", "test")
    message = str(error.value)
    assert "'fashion_mnist'" in message.split(";")[0]  # the suggestion
    for name in ("synthetic", "synthetic_gray", "cifar10", "svhn", "mnist", "fashion_mnist"):
        assert name in message


def test_mnist_corrupt_gzip_stream_is_one_line_through_the_cli(tmp_path: Path, capsys) -> None:
    from abcrown_plugins.cli import main

    folder = tmp_path / "MNIST" / "raw"
    _write_idx(folder, "test", 10, compress=True)
    _write_idx(folder, "train", 10, compress=True)
    path = folder / "t10k-images-idx3-ubyte.gz"
    # a valid gzip header, then a deflate block of the reserved type 3: zlib.error, which is not an OSError
    path.write_bytes(path.read_bytes()[:10] + b"\x07" + bytes(64))
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", "test", root=str(tmp_path))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{dataset: mnist, root: {tmp_path}}}\ngeneral: {{progress: false}}\n")
    assert main(["train", str(cfg), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "re-download" in err and not (tmp_path / "out").exists()
