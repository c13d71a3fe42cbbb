"""Bridge from the project's config and checkpoints to the model zoo.

``model_for(arch, info)`` builds a zoo model for a data set's geometry and
normalisation; ``model_from_checkpoint(payload)`` rebuilds the model a
checkpoint describes and loads its (folded) weights strictly.
"""

from __future__ import annotations

from typing import Any

from torch import nn

import model_zoo
from abcrown_plugins.errors import UserError


def model_for(arch: str, info) -> nn.Module:
    """Zoo model ``arch`` for a :class:`abcrown_plugins.data.DataInfo`."""
    return build(arch, info.channels, info.size, info.num_classes, info.mean, info.std)


def build(arch: str, channels: int, input_size: int, num_classes: int, mean, std) -> nn.Module:
    try:
        return model_zoo.build_model(arch, in_channels=channels, input_size=input_size,
                                     num_classes=num_classes, mean=tuple(mean), std=tuple(std))
    except model_zoo.UnknownModelError as e:
        raise UserError(str(e)) from None


def model_meta(arch: str, info) -> dict[str, Any]:
    """The checkpoint metadata that lets :func:`model_from_checkpoint` rebuild the model."""
    return {"arch": arch, "dataset": info.name, "num_classes": info.num_classes, "channels": info.channels,
            "input_size": info.size, "mean": list(info.mean), "std": list(info.std)}


def model_from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    """Rebuild and strictly load the model of a checkpoint payload, in eval mode."""
    meta = payload["meta"]
    model = build(meta["arch"], meta["channels"], meta["input_size"], meta["num_classes"], meta["mean"], meta["std"])
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit model '{meta['arch']}': "
                        f"{str(e).splitlines()[0]}") from None
    return model.eval()
