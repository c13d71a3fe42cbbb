"""Typed metadata of a model checkpoint.

A checkpoint stores its metadata as plain data (``weights_only`` loading reads
nothing else); :class:`ModelMeta` is the one typed view of it. The seven
model-describing keys are required: they rebuild the network
(:func:`abcrown_plugins.models.load_model`). The keys the project's code reads
back have typed fields; every other key (the resolved config, the training
history, ...) is kept in ``extra`` and written back unchanged, so a checkpoint
read and re-written keeps all of its metadata.

``task`` (:class:`TaskInfo`) says what the classifier's outputs mean when they
are not the classes of ``dataset`` (a synthetic attribute, or one head per
attribute for a multi-head base network); ``transfer`` (:class:`TransferInfo`)
links a downstream network of ``abcrown-plugins transfer`` to its base.
An imported network (``model.arch`` ``onnx:PATH`` or ``python:MODULE:FUNCTION``)
keeps its ONNX graph in ``graph`` (bytes) and where it came from in ``source``, so
the checkpoint rebuilds it without the original file
(:mod:`abcrown_plugins.models.imported`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

__all__ = ["MetaError", "ModelCheckpoint", "ModelMeta", "TaskInfo", "TransferInfo"]

#: The keys that describe the network itself (all required).
MODEL_KEYS = ("arch", "dataset", "num_classes", "channels", "input_size", "mean", "std")


class MetaError(ValueError):
    """Metadata that is missing or malformed (the message names the keys)."""


def _typed(cls, data: Mapping[str, Any], what: str):
    """``cls(**data)`` over the dataclass's own fields; unknown keys are an error naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MetaError(f"has unknown {what} metadata {unknown}")
    try:
        return cls(**data)
    except TypeError as e:
        raise MetaError(f"has incomplete {what} metadata ({e})") from None


@dataclass(frozen=True)
class TaskInfo:
    """What the outputs classify: a synthetic ``attribute`` of ``base_dataset``, or several ``attributes``
    (one head each, a multi-head base network)."""

    scenario: str
    base_dataset: str
    attribute: str | None = None
    attributes: list[str] | None = None

    @property
    def multi_head(self) -> bool:
        return self.attribute is None


@dataclass(frozen=True)
class TransferInfo:
    """A downstream network of ``abcrown-plugins transfer``: its base and its sparse delta.

    ``base_checkpoint`` is the base network's absolute path (None for ``direct``,
    trained from scratch); the checkpoint's ``masks`` say which entries may differ
    from the base.
    """

    base_checkpoint: str | None
    run: str
    pattern: str | None
    k: float
    updated: int
    total: int
    classifier: list[str]
    frozen_prefix: int = 0
    rigl: bool = False
    diffstab_weight: float = 0.0
    few_shot: bool = False
    train_size: int | None = None


@dataclass(frozen=True)
class ModelMeta:
    """The metadata of a model checkpoint (module docstring)."""

    arch: str
    dataset: str
    num_classes: int
    channels: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float | None = None
    config_hash: str | None = None
    round: int | None = None
    data_seed: int | None = None
    metrics: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    heads: list[list[Any]] | None = None
    task: TaskInfo | None = None
    transfer: TransferInfo | None = None
    graph: bytes | None = None
    source: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.graph is not None and not isinstance(self.graph, bytes):
            raise ValueError(f"graph must be the ONNX model's bytes, got {type(self.graph).__name__}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"mean {list(self.mean)[:4]} and std {list(self.std)[:4]} must be finite, std > 0")
        if self.eps is not None:
            if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0 <= self.eps < math.inf:
                raise ValueError(f"eps must be a finite number >= 0, got {str(self.eps)[:80]}")
            object.__setattr__(self, "eps", float(self.eps))

    @property
    def net_name(self) -> str:
        """A file-name-safe name of the network: the zoo name, or the imported file's / function's name."""
        name = self.arch
        if self.source is not None:
            name = Path(self.source.get("path", "")).stem or self.source.get("spec", "").rpartition(":")[2] or name
        return re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip("._") or "net"

    @property
    def data_name(self) -> str:
        """A file-name-safe name of the data set (``npy:DIR`` -> ``npy_DIRNAME``)."""
        scheme, sep, rest = self.dataset.partition(":")
        name = f"{scheme}_{Path(rest).name}" if sep else self.dataset
        return re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip("._") or "data"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input."""
        return (self.channels, self.input_size, self.input_size)

    @classmethod
    def for_data(cls, arch: str, info, **fields: Any) -> "ModelMeta":
        """The metadata of zoo model ``arch`` built for a :class:`abcrown_plugins.data.DataInfo`."""
        return cls(arch=arch, dataset=info.name, num_classes=info.num_classes, channels=info.channels,
                   input_size=info.size, mean=tuple(info.mean), std=tuple(info.std), **fields)

    def replace(self, **changes: Any) -> "ModelMeta":
        """A copy with some fields changed; unknown names go to (a copy of) ``extra``."""
        names = {f.name for f in dataclasses.fields(self)}
        extra = {**self.extra, **{k: v for k, v in changes.items() if k not in names}}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in names}, extra=extra)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelMeta":
        """The typed view of a checkpoint's ``meta`` dict; MetaError naming missing or malformed keys."""
        if not isinstance(data, Mapping):
            raise MetaError(f"has metadata of type {type(data).__name__}, expected a mapping")
        missing = [k for k in MODEL_KEYS if k not in data]
        if missing:
            raise MetaError(f"lacks metadata {missing}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        if known.get("task") is not None:
            known["task"] = _typed(TaskInfo, known["task"], "task")
        if known.get("transfer") is not None:
            known["transfer"] = _typed(TransferInfo, known["transfer"], "transfer")
        try:
            return cls(**known, extra={k: v for k, v in data.items() if k not in names})
        except (TypeError, ValueError, OverflowError) as e:
            raise MetaError(f"has malformed metadata ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint: the model keys, every set field, and ``extra``."""
        out: dict[str, Any] = {k: getattr(self, k) for k in MODEL_KEYS}
        out["mean"], out["std"] = list(self.mean), list(self.std)
        for f in dataclasses.fields(self):
            if f.name in MODEL_KEYS or f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class ModelCheckpoint:
    """A model checkpoint as read from disk: folded weights, typed metadata, masks.

    ``masks``: parameter name -> bool tensor (True = kept / may differ from the
    base); ``channel_masks``: conv name -> bool per output channel, non-empty only
    for a channel-pruned network.
    """

    path: Path
    state_dict: dict[str, Tensor]
    meta: ModelMeta
    masks: dict[str, Tensor]
    channel_masks: dict[str, Tensor]
