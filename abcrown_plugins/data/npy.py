"""``npy:DIR``: a data set of the user's own numpy arrays, in α,β-CROWN's sample format.

Layout (nothing else is read)::

    DIR/X.npy         test images, N x C x H x W (NCHW) or N x H x W x C (NHWC)
    DIR/y.npy         test labels, N integers >= 0
    DIR/train/X.npy   training images (optional; training needs them)
    DIR/train/y.npy   training labels

Images are ``uint8`` (pixel = byte / 255) or floats in ``[0, 1]``; C is 1 or 3 and
images are square (H == W). The layout is told from the shape: NCHW when axis 1
is 1 or 3 and axes 2 and 3 are equal, else NHWC when axis 3 is 1 or 3 and axes 1
and 2 are equal (NCHW wins the rare tie such as N x 3 x 3 x 3). Float images that
are whole grey levels (``x == round(x * 255) / 255`` in float32) are stored as bytes, so
the four layouts of the same images load to identical tensors; other floats are
kept as ``float32``.

The :class:`DataInfo` is inferred: channels and size from the images,
``num_classes`` = largest label of both splits + 1, class names ``"0"``, ``"1"``...,
normalisation mean 0 and std 1 (set ``data.mean``/``data.std`` for the network's).
Files are read with ``allow_pickle=False``; every problem is one
:class:`UserError` naming the file, what is wrong and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from abcrown_plugins.data.base import DataInfo, ImageDataset
from abcrown_plugins.data.registry import DatasetSource, register_dataset_scheme
from abcrown_plugins.errors import UserError

__all__ = ["NpySource", "read_npy_split"]

_GREY = (1, 3)


def _load(path: Path, mmap: bool = False) -> np.ndarray:
    """The array of the ``.npy`` file ``path`` (memory-mapped with ``mmap``); never unpickles anything."""
    if not path.is_file():
        raise UserError(f"{path} is missing; save the array there with numpy.save")
    try:
        with path.open("rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY":
            raise UserError(f"{path} is not a .npy file (no NUMPY header); save the array with numpy.save")
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as e:
        if "object" in str(e).lower():
            raise UserError(f"{path} holds Python objects, which are never unpickled; save a plain numeric "
                            "array") from None
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UserError(f"cannot read {path} as a .npy array ({reason}); save it again with "
                        "numpy.save(path, array)") from None


def _layout(path: Path, shape: tuple[int, ...]) -> str:
    """``"NCHW"`` or ``"NHWC"`` for an image array of ``shape`` (module docstring), else UserError."""
    if len(shape) == 4:
        _, a, b, c = shape
        if a in _GREY and b == c:
            return "NCHW"
        if c in _GREY and a == b:
            return "NHWC"
        if a in _GREY or c in _GREY:
            raise UserError(f"{path} has shape {shape}: images must be square (H == W); crop or pad them to a square")
    raise UserError(f"{path} has shape {shape}: expected N x C x H x W or N x H x W x C with C 1 or 3 and H == W; "
                    "reshape the array")


def _geometry(path: Path, shape: tuple[int, ...]) -> tuple[int, int]:
    """``(channels, size)`` of the images of ``path`` (shape from its header only)."""
    layout = _layout(path, shape)
    if shape[0] < 1:
        raise UserError(f"{path} holds no images; save at least one")
    return (shape[1], shape[2]) if layout == "NCHW" else (shape[3], shape[1])


def _labels(path: Path, n: int | None) -> np.ndarray:
    y = _load(path)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(f"{path} has shape {y.shape}: expected one label per image (a 1-d array); "
                        "save the class indices, not one-hot rows")
    if y.dtype.kind in "iu":
        out = y.astype(np.int64)
    elif y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        out = y.astype(np.int64)
    else:
        raise UserError(f"{path} holds {y.dtype} labels: expected integer class indices; save them as int64")
    if out.size and out.min() < 0:
        raise UserError(f"{path} holds a negative label ({int(out.min())}); class indices start at 0")
    if n is not None and out.shape[0] != n:
        raise UserError(f"{path} has {out.shape[0]} labels but its X.npy has {n} images; save one label per image")
    return out


def _images(path: Path) -> np.ndarray:
    """The images of ``path`` as ``uint8`` (whole grey levels) or ``float32``, N x C x H x W."""
    x = _load(path)
    layout = _layout(path, tuple(x.shape))
    if x.shape[0] < 1:
        raise UserError(f"{path} holds no images; save at least one")
    if layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind in "iu":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise UserError(f"{path} holds integers in [{lo}, {hi}]: expected bytes 0..255 or floats in [0, 1]; "
                            "save uint8 pixels or divide by 255")
        return np.ascontiguousarray(x.astype(np.uint8))
    if x.dtype.kind != "f":
        raise UserError(f"{path} holds {x.dtype} values: expected uint8 pixels or floats in [0, 1]")
    if not np.isfinite(x).all():
        raise UserError(f"{path} holds NaN or infinite values; images must be finite floats in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        hint = "; divide by 255" if hi > 1 and hi <= 255 and lo >= 0 else ""
        raise UserError(f"{path} holds floats in [{lo:.6g}, {hi:.6g}]: expected pixels in [0, 1] (normalise inside "
                        f"the network: data.mean/data.std){hint}")
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    grey = np.rint(x32 * np.float32(255.0)).astype(np.uint8)
    if np.array_equal(grey.astype(np.float32) / np.float32(255.0), x32):
        return grey
    return x32


def read_npy_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (``uint8`` or ``float32`` N x C x H x W) and ``int64`` labels of ``split`` of the npy folder."""
    base = folder if split == "test" else folder / "train"
    if split == "train" and not (base / "X.npy").is_file():
        raise UserError(f"{base / 'X.npy'} is missing: data set npy:{folder} has no training split; save the "
                        f"training images and labels as {base / 'X.npy'} and {base / 'y.npy'}, or use it for "
                        "evaluation only")
    images = _images(base / "X.npy")
    labels = _labels(base / "y.npy", images.shape[0])
    return torch.from_numpy(images), torch.from_numpy(labels)


class NpySource(DatasetSource):
    """The data set ``npy:DIR`` (module docstring); its :class:`DataInfo` is read from the array headers and labels."""

    def __init__(self, name: str, folder: str) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise UserError(f"data set {name!r}: folder '{self.folder}' not found; point npy: at the folder holding "
                            "X.npy and y.npy")
        splits = [self.folder] + ([self.folder / "train"] if (self.folder / "train" / "X.npy").is_file() else [])
        geometry, top = None, -1
        for base in splits:
            header = _load(base / "X.npy", mmap=True)
            this = _geometry(base / "X.npy", tuple(header.shape))
            if geometry is not None and this != geometry:
                raise UserError(f"{base / 'X.npy'} holds {this[0]} x {this[1]} x {this[1]} images but "
                                f"{self.folder / 'X.npy'} {geometry[0]} x {geometry[1]} x {geometry[1]}; both splits "
                                "need the same image shape")
            geometry = this
            labels = _labels(base / "y.npy", int(header.shape[0]))
            top = max(top, int(labels.max()) if labels.size else -1)
        channels, size = geometry
        if top < 1:
            raise UserError(f"the labels of data set {name!r} name only class 0; a classifier needs at least two "
                            f"classes in {self.folder / 'y.npy'}")
        num_classes = top + 1
        self.info = DataInfo(name, num_classes, channels, size, (0.0,) * channels, (1.0,) * channels,
                             tuple(str(k) for k in range(num_classes)))

    def load(self, split: str, root: str | None, num: int | None, seed: int) -> ImageDataset:
        images, labels = read_npy_split(self.folder, split)
        if tuple(images.shape[1:]) != self.info.shape:  # changed on disk since the info was read
            raise UserError(f"the images of data set {self.info.name!r} changed while it was read; run again")
        return ImageDataset(images, labels, self.info).subset(num, seed)


register_dataset_scheme("npy", NpySource, "npy:DIR")
