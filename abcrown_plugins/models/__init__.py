"""Models: zoo networks built for a data set, and the one way to load a checkpoint's model.

``model_for(arch, info)`` builds a zoo model for a data set's geometry and
normalisation; ``model_meta(arch, info)`` is the checkpoint metadata that
rebuilds it. :func:`load_model` is the only place where a checkpoint becomes a
network: every command, hook, exporter and experiment calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import model_zoo
from abcrown_plugins.checkpoints import ModelCheckpoint, ModelMeta, read_model_checkpoint
from abcrown_plugins.errors import UserError
from abcrown_plugins.pruning.compaction import compact as compact_model

__all__ = ["LoadedModel", "build", "load_model", "model_for", "model_meta"]


def model_for(arch: str, info) -> nn.Module:
    """Zoo model ``arch`` for a :class:`abcrown_plugins.data.DataInfo`."""
    return build(arch, info.channels, info.size, info.num_classes, info.mean, info.std)


def build(arch: str, channels: int, input_size: int, num_classes: int, mean, std) -> nn.Module:
    try:
        return model_zoo.build_model(arch, in_channels=channels, input_size=input_size,
                                     num_classes=num_classes, mean=tuple(mean), std=tuple(std))
    except model_zoo.UnknownModelError as e:
        raise UserError(str(e)) from None


def model_meta(arch: str, info) -> ModelMeta:
    """The checkpoint metadata that lets :func:`load_model` rebuild ``model_for(arch, info)``."""
    return ModelMeta.for_data(arch, info)


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint's network (eval mode) with its typed metadata and masks.

    ``compacted``: the network was rebuilt physically smaller from the
    checkpoint's channel masks (its outputs equal the masked network's).
    """

    model: nn.Module
    meta: ModelMeta
    checkpoint: ModelCheckpoint
    compacted: bool

    @property
    def path(self) -> Path:
        return self.checkpoint.path


def load_model(path: str | Path | ModelCheckpoint, compact: bool = False,
               device: torch.device | str | None = None) -> LoadedModel:
    """The model of a checkpoint (a path, ``zoo:NAME``, or one already read), in eval mode.

    Weights are loaded strictly (masks are already folded into them); a
    mismatch is a UserError naming the architecture. With ``compact``, a
    checkpoint with channel masks is rebuilt physically smaller (what verifiers
    and exporters want); without it, or without channel masks, the network
    keeps its dense shape.
    """
    ckpt = path if isinstance(path, ModelCheckpoint) else read_model_checkpoint(path)
    meta = ckpt.meta
    model = build(meta.arch, meta.channels, meta.input_size, meta.num_classes, meta.mean, meta.std)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint '{ckpt.path}': weights do not fit model '{meta.arch}': "
                        f"{str(e).splitlines()[0]}") from None
    compacted = bool(compact and ckpt.channel_masks)
    if compacted:
        model = compact_model(model, ckpt.channel_masks)
    model = model.eval()
    if device is not None:
        model = model.to(device)
    return LoadedModel(model, meta, ckpt, compacted)
