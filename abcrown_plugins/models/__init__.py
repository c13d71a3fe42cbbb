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
from abcrown_plugins.models.imported import import_network, is_imported, rebuild
from abcrown_plugins.pruning.compaction import compact as compact_model

__all__ = ["LoadedModel", "StartModel", "build", "is_imported", "load_model", "model_for", "model_meta",
           "start_model"]


def model_for(arch: str, info) -> nn.Module:
    """Zoo model ``arch`` for a :class:`abcrown_plugins.data.DataInfo`."""
    return build(arch, info.channels, info.size, info.num_classes, info.mean, info.std)


def build(arch: str, channels: int, input_size: int, num_classes: int, mean, std) -> nn.Module:
    """Zoo model ``arch``; its ``input_shape`` attribute is (C, H, W)."""
    if is_imported(arch):
        raise UserError(f"model.arch {arch} is an imported network: it is built from its file with "
                        "model.checkpoint (python:) by the run, or reopened from a checkpoint of the project")
    try:
        model = model_zoo.build_model(arch, in_channels=channels, input_size=input_size,
                                      num_classes=num_classes, mean=tuple(mean), std=tuple(std))
    except model_zoo.UnknownModelError as e:
        raise UserError(f"{e}; or bring your own: onnx:PATH or python:MODULE:FUNCTION") from None
    model.input_shape = (channels, input_size, input_size)
    return model


def model_meta(arch: str, info) -> ModelMeta:
    """The checkpoint metadata that lets :func:`load_model` rebuild ``model_for(arch, info)``."""
    return ModelMeta.for_data(arch, info)


@dataclass(frozen=True)
class StartModel:
    """A run's network before training: the model, its checkpoint metadata, the checkpoint it starts from.

    ``start`` is ``model.checkpoint`` read as a project checkpoint (zoo networks;
    None otherwise); ``pretrained``: the weights are the user's (an imported network),
    never to be re-initialised; ``identity``: what the run's identity records of the
    weights' source (content hashes).
    """

    model: nn.Module
    meta: ModelMeta
    start: ModelCheckpoint | None
    pretrained: bool
    identity: dict[str, str]


def start_model(arch: str, checkpoint: str | None, info) -> StartModel:
    """The network of ``model.arch`` / ``model.checkpoint`` for a data set's :class:`DataInfo`.

    A zoo name builds the zoo model (and reads ``model.checkpoint``, a project
    checkpoint, when set); ``onnx:PATH`` and ``python:MODULE:FUNCTION`` import the
    user's network with its own weights (:mod:`abcrown_plugins.models.imported`).
    """
    if is_imported(arch):
        imp = import_network(arch, checkpoint, tuple(info.shape), info.mean, info.std, info.num_classes)
        imp.model.input_shape = tuple(info.shape)
        meta = ModelMeta.for_data(arch, info, graph=imp.graph, source=imp.source)
        return StartModel(imp.model, meta, None, True, {"model.arch": imp.source["sha256"]})
    model = model_for(arch, info)
    start = read_model_checkpoint(checkpoint) if checkpoint else None
    return StartModel(model, model_meta(arch, info), start, False, {})


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
    if meta.graph is not None:
        model = rebuild(meta.graph, meta.input_shape, meta.mean, meta.std)
        model.input_shape = meta.input_shape
    elif is_imported(meta.arch):
        raise UserError(f"checkpoint '{ckpt.path}' of imported network {meta.arch} lacks its graph; "
                        "write it again with this version")
    else:
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
