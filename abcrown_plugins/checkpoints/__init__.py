"""Checkpoints: atomic writes, tensor-and-plain-data payloads, ``weights_only`` loading.

A checkpoint is a dict holding only tensors and plain Python data (str, int,
float, bool, None, list, dict), so ``torch.load(..., weights_only=True)``
reads it and nothing in it can run code::

    {"format": FORMAT, "state_dict": {...folded dense weights...},
     "meta": {"arch", "dataset", "num_classes", "channels", "input_size", "mean", "std",
              "eps", "config_hash", "config", "metrics", ...},
     "masks": {param_name: bool tensor},
     "channel_masks": {conv_name: bool tensor per output channel} (channel-pruned only) }

:func:`read_model_checkpoint` gives it back typed (:class:`ModelCheckpoint`,
:class:`ModelMeta`); :func:`abcrown_plugins.models.load_model` turns it into a model.

Writes are atomic (:mod:`abcrown_plugins.fileio`): a killed run never leaves
half a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from abcrown_plugins.checkpoints.meta import MetaError, ModelCheckpoint, ModelMeta, TaskInfo, TransferInfo
from abcrown_plugins.errors import UserError
from abcrown_plugins.fileio import atomic_write_bytes
from abcrown_plugins.numerics import require_finite

__all__ = ["FORMAT", "ModelCheckpoint", "ModelMeta", "TaskInfo", "TransferInfo", "ZOO_PREFIX", "load",
           "read_model_checkpoint", "resolve", "save", "save_model_checkpoint"]

FORMAT = "abcrown_plugins.checkpoint/1"


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a payload of tensors and plain data."""
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a payload with ``weights_only=True``; a bad file is one clear line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - anything torch raises here is a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint '{path}' cannot be read safely (weights_only): {first}") from None
    if not isinstance(payload, dict):
        raise UserError(f"checkpoint '{path}' holds a {type(payload).__name__}, expected a dict")
    return payload


ZOO_PREFIX = "zoo:"


def resolve(path: str | Path) -> Path:
    """A checkpoint path: ``zoo:NAME`` means the model zoo's ``checkpoints/NAME`` (``.pt`` may be left
    off); else as given."""
    text = str(path)
    if text.startswith(ZOO_PREFIX):
        import model_zoo

        found = Path(model_zoo.__file__).parent / "checkpoints" / text[len(ZOO_PREFIX):]
        if not found.exists() and found.suffix != ".pt" and found.with_name(found.name + ".pt").exists():
            return found.with_name(found.name + ".pt")
        return found
    return Path(text).expanduser()


def save_model_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], meta: ModelMeta | dict[str, Any],
                          masks: dict[str, torch.Tensor] | None = None,
                          channel_masks: dict[str, torch.Tensor] | None = None) -> None:
    """Write a model checkpoint in :data:`FORMAT` (weights already mask-folded).

    ``meta`` is validated as a :class:`ModelMeta`. ``channel_masks`` (conv name ->
    bool per output channel) marks a channel-pruned network; :func:`abcrown_plugins.models.load_model`
    then rebuilds it physically smaller when asked to compact.
    """
    if not isinstance(meta, ModelMeta):
        meta = ModelMeta.from_dict(meta)
    payload = {"format": FORMAT,
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
               "meta": meta.to_dict(),
               "masks": {k: v.detach().cpu() for k, v in (masks or {}).items()}}
    if channel_masks:
        payload["channel_masks"] = {k: v.detach().cpu().bool() for k, v in channel_masks.items()}
    save(path, payload)


def read_model_checkpoint(path: str | Path) -> ModelCheckpoint:
    """Read a model checkpoint (a path or ``zoo:NAME``): format checked, metadata typed, every weight and
    buffer finite; else UserError (a NaN network gets no verified accuracy, certificate or benchmark)."""
    given, path = path, resolve(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{given}' not found (looked at {path.resolve()})")
    payload = load(path)
    if payload.get("format") != FORMAT or "state_dict" not in payload:
        raise UserError(f"'{path}' is not an abcrown_plugins model checkpoint "
                        f"(format {payload.get('format')!r}, expected {FORMAT!r})")
    try:
        meta = ModelMeta.from_dict(payload.get("meta", {}))
    except MetaError as e:
        raise UserError(f"checkpoint '{path}' {e}; re-create it with abcrown-plugins") from None
    if not isinstance(payload["state_dict"], dict):
        raise UserError(f"checkpoint '{path}' holds a state_dict of type {type(payload['state_dict']).__name__}, "
                        f"expected a dict of tensors; re-create it with abcrown-plugins")
    require_finite(payload["state_dict"], f"checkpoint '{path}'",
                   "the network diverged or the file is damaged: retrain it or use an earlier checkpoint")
    return ModelCheckpoint(path=path, state_dict=payload["state_dict"], meta=meta,
                           masks={k: v.bool() for k, v in (payload.get("masks") or {}).items()},
                           channel_masks={k: v.bool() for k, v in (payload.get("channel_masks") or {}).items()})
