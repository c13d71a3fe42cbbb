"""``vnnlib:DIR``: the test split of an existing VNN-COMP benchmark, read from its local-robustness properties.

``DIR/instances.csv`` (rows ``onnx/NET.onnx,vnnlib/PROP.vnnlib,TIMEOUT``, no
header) names the properties; each distinct VNN-LIB file (1.0 or 2.0, optionally
``.gz``; :func:`abcrown_plugins.export.vnnlib.parse_robustness`) becomes one
example, in the order of its first row:

* its label is the class the property protects (the violation says some other
  ``Y_j >= Y_label``);
* its exact input box is kept (:class:`~abcrown_plugins.data.base.InputBoxes`,
  ``float64``, with the file it came from), so an export of another network can
  state the very same properties (``export --dataset vnnlib:DIR``);
* its image is the box centre, rounded to ``float32``, in whatever input space
  the benchmark uses (a benchmark that normalises outside its network has boxes
  outside [0, 1]).

Geometry (N x C x H x W, C 1 or 3, square): a VNN-LIB 2.0 file declares its
input shape (``[1, C, H, W]``); for 1.0 files it is the input of the row's ONNX
network (only the graph's input is read). A flat input of n values is an image
of 1 x s x s (n = s*s) or 3 x s x s (n = 3*s*s). Every box must have C*H*W
values and every property the same number of classes, else one line says which
file differs. There is no training split. The :class:`DataInfo` has mean 0 and
std 1 (set ``data.mean``/``data.std`` for the network's own normalisation).
"""

from __future__ import annotations

import csv
import gzip
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from abcrown_plugins.data.base import DataInfo, ImageDataset, InputBoxes
from abcrown_plugins.data.registry import DatasetSource, register_dataset_scheme
from abcrown_plugins.errors import UserError
from abcrown_plugins.vnnlib import read_robustness_vnnlib

__all__ = ["BenchmarkProperties", "VnnlibSource", "read_benchmark_properties"]

_CACHE: OrderedDict[tuple, BenchmarkProperties] = OrderedDict()
_CACHE_SIZE = 4


@dataclass(frozen=True)
class BenchmarkProperties:
    """The local-robustness properties of a benchmark folder, one per distinct VNN-LIB file.

    ``lower``/``upper``: ``float64`` boxes ``N x C x H x W``; ``labels``: ``int64`` ``N``;
    ``sources``: each file, as ``instances.csv`` names it (relative to the folder).
    """

    lower: np.ndarray
    upper: np.ndarray
    labels: np.ndarray
    num_classes: int
    sources: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.lower.shape[1:])


def _rows(folder: Path) -> list[tuple[str, str]]:
    """``(onnx, vnnlib)`` of every row of ``folder/instances.csv``, paths relative to ``folder``."""
    path = folder / "instances.csv"
    if not path.is_file():
        raise UserError(f"'{folder}' has no instances.csv; point vnnlib: at a VNN-COMP benchmark folder (rows "
                        "onnx/NET.onnx,vnnlib/PROP.vnnlib,TIMEOUT)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); replace it with a readable copy") from None
    rows = []
    for n, row in enumerate(csv.reader(lines), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[1].strip():
            raise UserError(f"{path}:{n}: expected 'onnx,vnnlib,timeout', got {','.join(row)[:80]!r}")
        rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise UserError(f"{path} names no instances; a vnnlib: data set needs at least one property")
    return rows


def onnx_input_shape(path: Path) -> tuple[int, ...]:
    """The shape of the ONNX network's input (graph input that is not an initializer; symbolic axes read as 1)."""
    import onnx  # here, not at import: most users of the data package never read an ONNX file

    if not path.is_file():
        raise UserError(f"ONNX network '{path}' not found; instances.csv names it, and a VNN-LIB 1.0 property "
                        "takes its input shape from it")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                model = onnx.load_model_from_string(f.read())
        else:
            model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf and gzip raise many kinds of errors for a bad file
        raise UserError(f"cannot read ONNX network '{path}' ({type(e).__name__}); replace it with a valid "
                        "copy") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise UserError(f"ONNX network '{path}' declares no input")
    dims = inputs[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)


def image_shape(shape: tuple[int, ...], where: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of an input tensor ``shape`` (batch axes of 1 dropped; flat inputs read as square images)."""
    dims = list(shape)
    while len(dims) > 3 and dims[0] == 1:
        dims.pop(0)
    if len(dims) == 3:
        c, h, w = dims
        if c in (1, 3) and h == w:
            return (c, h, w)
        raise UserError(f"{where}: input shape {list(shape)} is not N x C x H x W with C 1 or 3 and square H == W; "
                        "vnnlib: data sets are images")
    n = int(np.prod(dims, dtype=np.int64))
    for c in (1, 3):
        side = math.isqrt(n // c) if n % c == 0 else 0
        if side and c * side * side == n:
            return (c, side, side)
    raise UserError(f"{where}: a flat input of {n} values is not a square grey or RGB image; vnnlib: data sets "
                    "are images")


def _signature(folder: Path, rows: list[tuple[str, str]]) -> tuple:
    files = [folder / "instances.csv"] + [folder / p for row in rows for p in row]
    stats = []
    for f in files:
        try:
            st = f.stat()
            stats.append((str(f), st.st_mtime_ns, st.st_size))
        except OSError:
            stats.append((str(f), None, None))
    return (str(folder.resolve()), tuple(stats))


def read_benchmark_properties(folder: str | Path) -> BenchmarkProperties:
    """Read every property of the benchmark ``folder`` (module docstring); cached while its files are unchanged."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"benchmark folder '{folder}' not found; point vnnlib: at a VNN-COMP benchmark folder")
    rows = _rows(folder)
    key = _signature(folder, rows)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    first: dict[str, str] = {}
    for onnx_rel, vnn_rel in rows:
        first.setdefault(vnn_rel, onnx_rel)
    shapes: dict[str, tuple[int, int, int]] = {}
    lowers, uppers, labels, sources = [], [], [], []
    reference = None  # (file, shape, num_classes) of the first property
    for vnn_rel, onnx_rel in first.items():
        prop = read_robustness_vnnlib(folder / vnn_rel)
        where = str(folder / vnn_rel)
        if prop.input_shape is not None:
            shape = image_shape(prop.input_shape, where)
        else:
            if onnx_rel not in shapes:
                shapes[onnx_rel] = image_shape(onnx_input_shape(folder / onnx_rel), str(folder / onnx_rel))
            shape = shapes[onnx_rel]
        size = int(np.prod(shape))
        if prop.lower.size != size:
            raise UserError(f"{where}: its box has {prop.lower.size} values but its network takes {shape[0]} x "
                            f"{shape[1]} x {shape[2]} = {size} inputs; fix or drop the property")
        if reference is None:
            reference = (vnn_rel, shape, prop.num_classes)
        elif (shape, prop.num_classes) != reference[1:]:
            raise UserError(f"{where}: a {shape} input box with {prop.num_classes} classes, but {reference[0]} has "
                            f"{reference[1]} and {reference[2]}; a vnnlib: data set needs one geometry, drop the "
                            "other properties from instances.csv")
        lowers.append(prop.lower.reshape(shape))
        uppers.append(prop.upper.reshape(shape))
        labels.append(prop.label)
        sources.append(vnn_rel)
    props = BenchmarkProperties(np.stack(lowers), np.stack(uppers), np.asarray(labels, dtype=np.int64),
                                reference[2], tuple(sources))
    _CACHE[key] = props
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return props


class VnnlibSource(DatasetSource):
    """The data set ``vnnlib:DIR`` (module docstring): a test split only."""

    def __init__(self, name: str, folder: str) -> None:
        self.folder = Path(folder).expanduser()
        props = read_benchmark_properties(self.folder)
        c, size, _ = props.shape
        if c not in (1, 3):  # image_shape guarantees it; DataInfo would refuse otherwise
            raise UserError(f"data set {name!r}: {c} channels; vnnlib: data sets are grey or RGB images")
        k = props.num_classes
        self.info = DataInfo(name, k, c, size, (0.0,) * c, (1.0,) * c, tuple(str(j) for j in range(k)))

    def load(self, split: str, root: str | None, num: int | None, seed: int) -> ImageDataset:
        if split != "test":
            raise UserError(f"data set {self.info.name!r} has no training split (the properties of a VNN-COMP "
                            "benchmark are a test split); train on another data set and verify or export with it")
        props = read_benchmark_properties(self.folder)
        if props.shape != self.info.shape or props.num_classes != self.info.num_classes:
            raise UserError(f"the properties of data set {self.info.name!r} changed while it was read; run again")
        lower, upper = torch.from_numpy(props.lower), torch.from_numpy(props.upper)
        centre = ((lower + upper) / 2).float()
        boxes = InputBoxes(lower, upper, props.sources)
        return ImageDataset(centre, torch.from_numpy(props.labels), self.info, boxes=boxes).subset(num, seed)


register_dataset_scheme("vnnlib", VnnlibSource, "vnnlib:DIR")
