"""Readers for the standard files of CIFAR-10, SVHN, MNIST and Fashion-MNIST.

Nothing is downloaded: the files must already be under ``root`` (``data.root``;
``None`` means ``./data``). Accepted layouts, the first folder holding every
file of the split wins:

* ``cifar10``: ``<root>/cifar-10-batches-py/`` or ``<root>/`` holding
  ``data_batch_1`` ... ``data_batch_5`` (train) and ``test_batch`` (test), the
  official "python version" pickles.
* ``mnist``: ``<root>/MNIST/raw/`` or ``<root>/``; ``fashion_mnist``:
  ``<root>/FashionMNIST/raw/`` or ``<root>/``; holding
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` (train),
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (test), each either
  plain or gzipped with a ``.gz`` suffix.
* ``svhn``: ``<root>/`` or ``<root>/svhn/`` holding ``train_32x32.mat`` or
  ``test_32x32.mat`` (the "cropped digits" format; label 10 is digit 0).

The CIFAR pickles are read by an unpickler that can only rebuild numpy arrays
(and builtin containers), so a tampered file cannot run code. Missing, truncated
or malformed files raise :class:`UserError` naming the file and the fix.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.io import loadmat

from abcrown_plugins.data.base import DataInfo, ImageDataset
from abcrown_plugins.data.registry import DatasetSource, register_dataset
from abcrown_plugins.errors import UserError

__all__ = ["DEFAULT_ROOT", "read_cifar10", "read_idx", "read_mnist", "read_svhn"]

#: Folder searched when ``root`` is ``None``.
DEFAULT_ROOT = "data"

_DIGITS = tuple(str(d) for d in range(10))

CIFAR10_INFO = DataInfo(
    "cifar10",
    10,
    3,
    32,
    (0.4914, 0.4822, 0.4465),
    (0.2471, 0.2435, 0.2616),
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
)
SVHN_INFO = DataInfo("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), _DIGITS)
MNIST_INFO = DataInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), _DIGITS)
FASHION_MNIST_INFO = DataInfo(
    "fashion_mnist",
    10,
    1,
    28,
    (0.2860,),
    (0.3530,),
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)


# ---------------------------------------------------------------- locating files


def _find(
    what: str, root: str | None, subdirs: tuple[str, ...], names: tuple[str, ...], gz: bool = False
) -> list[Path]:
    """Return the paths of ``names`` in the first of ``root/<subdir>`` that holds all of them.

    ``what`` names the data set and split in the error (e.g. ``"mnist test"``).

    With ``gz`` each name may also be present as ``<name>.gz`` (the plain file wins).
    Raises :class:`UserError` listing the files and folders when no folder holds them all.
    """
    base = Path(DEFAULT_ROOT if root is None else root).expanduser()
    folders = [base / sub if sub else base for sub in subdirs]
    for folder in folders:
        found = []
        for name in names:
            candidates = [folder / name, folder / f"{name}.gz"] if gz else [folder / name]
            match = next((path for path in candidates if path.is_file()), None)
            if match is None:
                break
            found.append(match)
        else:
            return found
    suffix = " (each optionally .gz)" if gz else ""
    searched = ", ".join(str(folder.resolve()) for folder in folders)
    raise UserError(
        f"{what} files not found: expected {', '.join(names)}{suffix} in one of {searched}; "
        f"put the files there or set data.root to the folder holding them"
    )


# ---------------------------------------------------------------------- CIFAR-10

_CIFAR_SUBDIRS = ("cifar-10-batches-py", "")
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def _reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _frombuffer() -> Any:
    try:
        from numpy._core.numeric import _frombuffer  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _codecs_encode() -> Any:
    import _codecs

    return _codecs.encode


# The only globals a CIFAR pickle may name: numpy's array and dtype rebuilders.
# Lists, dicts, ints and (in the official Python 2 files) strings need no
# globals. Files re-pickled by Python 3 with protocol 2 spell bytes as
# _codecs.encode(text, "latin1"), and arrays pickled with protocol 5 (the
# Python >= 3.8 default) name _frombuffer; both only build bytes or arrays.
_PICKLE_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("_codecs", "encode"): _codecs_encode,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`_PICKLE_GLOBALS`, so loading cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        resolve = _PICKLE_GLOBALS.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        return resolve()


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 pickle batch: ``uint8`` ``N x 3 x 32 x 32`` images, ``int64`` ``N`` labels."""
    try:
        with path.open("rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except Exception as error:  # a corrupt pickle can fail in many ways; all mean "bad file"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"cannot read CIFAR-10 batch {path}: {reason}; re-download the python version of CIFAR-10"
        ) from None
    if not isinstance(batch, dict):
        raise UserError(f"CIFAR-10 batch {path} does not hold a dict; re-download the python version of CIFAR-10")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"CIFAR-10 batch {path} lacks a uint8 N x 3072 'data' array; re-download it")
    if labels is None:
        raise UserError(f"CIFAR-10 batch {path} lacks 'labels'; re-download it")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"CIFAR-10 batch {path} has non-integer labels; re-download it") from None
    if labels.shape != (data.shape[0],):
        raise UserError(f"CIFAR-10 batch {path} has {data.shape[0]} images but {labels.size} labels; re-download it")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10(root: str | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read CIFAR-10 ``split``: ``uint8`` ``N x 3 x 32 x 32`` images and ``int64`` ``N`` labels."""
    paths = _find(f"cifar10 {split}", root, _CIFAR_SUBDIRS, _CIFAR_FILES[split])
    batches = [_load_cifar_batch(path) for path in paths]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


# ------------------------------------------------------------------ MNIST (idx)

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an idx file of unsigned bytes (plain, or gzipped if ``path`` ends in ``.gz``).

    ``magic`` is the expected big-endian 32-bit magic number (0x803: 3-d images,
    0x801: 1-d labels); its low byte is the number of dimensions. Returns a
    ``uint8`` array of the dimensions stored in the header.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # a corrupt gzip stream raises zlib.error, not OSError
        reason = "corrupt gzip data" if isinstance(error, zlib.error) else error.__class__.__name__
        raise UserError(f"cannot read {path} ({reason}); re-download it") from None
    if len(raw) < 4 or struct.unpack(">I", raw[:4])[0] != magic:
        found = f"0x{struct.unpack('>I', raw[:4])[0]:08x}" if len(raw) >= 4 else "none"
        raise UserError(
            f"{path} is not an idx file of the expected kind (magic {found}, expected 0x{magic:08x}); re-download it"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated inside its idx header; re-download it")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise UserError(
            f"{path} holds {len(raw) - header} data bytes but its header {dims} needs {expected}; re-download it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_mnist(dataset: str, root: str | None, split: str, subdir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an MNIST-format ``split`` from ``<root>/<subdir>/`` or ``<root>/``.

    Returns ``uint8`` ``N x 1 x 28 x 28`` images and ``int64`` ``N`` labels.
    """
    image_path, label_path = _find(f"{dataset} {split}", root, (subdir, ""), _IDX_FILES[split], gz=True)
    images = read_idx(image_path, _IDX_IMAGES_MAGIC)
    labels = read_idx(label_path, _IDX_LABELS_MAGIC).astype(np.int64)
    if images.shape[1:] != (28, 28):
        raise UserError(
            f"{image_path} holds {images.shape[1]}x{images.shape[2]} images, expected 28x28; re-download it"
        )
    if images.shape[0] != labels.shape[0]:
        raise UserError(
            f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} labels; re-download them"
        )
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


# -------------------------------------------------------------------------- SVHN


def read_svhn(root: str | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read SVHN ``split`` (cropped digits): ``uint8`` ``N x 3 x 32 x 32`` images, ``int64`` ``N`` labels 0-9."""
    (path,) = _find(f"svhn {split}", root, ("", "svhn"), (f"{split}_32x32.mat",))
    try:
        mat = loadmat(path)
    except Exception as error:  # noqa: BLE001 - scipy raises many kinds of errors for a corrupt file
        raise UserError(f"cannot read {path} as a MATLAB file ({error.__class__.__name__}); re-download it") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise UserError(f"{path} lacks a uint8 32 x 32 x 3 x N array 'X'; re-download it")
    if not isinstance(y, np.ndarray) or not np.issubdtype(y.dtype, np.number):
        raise UserError(f"{path} lacks a numeric label array 'y'; re-download it")
    labels = y.reshape(-1).astype(np.int64)
    if labels.shape[0] != x.shape[3]:
        raise UserError(f"{path} has {x.shape[3]} images but {labels.shape[0]} labels; re-download it")
    labels[labels == 10] = 0  # SVHN stores digit 0 as 10
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return torch.from_numpy(images), torch.from_numpy(labels)


# ---------------------------------------------------------------- registration


def _dataset(info: DataInfo, images: torch.Tensor, labels: torch.Tensor, num: int | None, seed: int) -> ImageDataset:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
        raise UserError(f"{info.name} labels outside [0, {info.num_classes}); the files are corrupt, re-download them")
    return ImageDataset(images, labels, info).subset(num, seed)


@register_dataset("cifar10")
class Cifar10(DatasetSource):
    """CIFAR-10 from the official python pickles (see the module docstring for layouts)."""

    info = CIFAR10_INFO

    @classmethod
    def load(cls, split: str, root: str | None, num: int | None, seed: int) -> ImageDataset:
        return _dataset(cls.info, *read_cifar10(root, split), num, seed)


@register_dataset("svhn")
class Svhn(DatasetSource):
    """SVHN cropped digits from the official ``.mat`` files."""

    info = SVHN_INFO

    @classmethod
    def load(cls, split: str, root: str | None, num: int | None, seed: int) -> ImageDataset:
        return _dataset(cls.info, *read_svhn(root, split), num, seed)


@register_dataset("mnist")
class Mnist(DatasetSource):
    """MNIST from the official idx files."""

    info = MNIST_INFO

    @classmethod
    def load(cls, split: str, root: str | None, num: int | None, seed: int) -> ImageDataset:
        return _dataset(cls.info, *read_mnist("mnist", root, split, "MNIST/raw"), num, seed)


@register_dataset("fashion_mnist")
class FashionMnist(DatasetSource):
    """Fashion-MNIST from the official idx files."""

    info = FASHION_MNIST_INFO

    @classmethod
    def load(cls, split: str, root: str | None, num: int | None, seed: int) -> ImageDataset:
        return _dataset(cls.info, *read_mnist("fashion_mnist", root, split, "FashionMNIST/raw"), num, seed)
