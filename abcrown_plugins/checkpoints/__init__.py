"""Checkpoints: atomic writes, tensor-and-plain-data payloads, ``weights_only`` loading.

A checkpoint is a dict holding only tensors and plain Python data (str, int,
float, bool, None, list, dict), so ``torch.load(..., weights_only=True)``
reads it and nothing in it can run code::

    {"format": FORMAT, "state_dict": {...folded dense weights...},
     "meta": {"arch", "dataset", "num_classes", "channels", "input_size", "mean", "std",
              "eps", "config_hash", "config", "metrics", ...},
     "masks": {param_name: bool tensor} }

Writes go to a temporary file in the target folder, are flushed to disk,
then renamed over the target: a killed run never leaves half a checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from abcrown_plugins.errors import UserError

FORMAT = "abcrown_plugins.checkpoint/1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make results private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


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


def save_model_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any],
                          masks: dict[str, torch.Tensor] | None = None,
                          channel_masks: dict[str, torch.Tensor] | None = None) -> None:
    """Write a model checkpoint in :data:`FORMAT` (weights already mask-folded).

    ``channel_masks`` (conv name -> bool per output channel) marks a channel-pruned
    network; loaders for verifiers then rebuild it physically smaller.
    """
    payload = {"format": FORMAT,
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
               "meta": meta,
               "masks": {k: v.detach().cpu() for k, v in (masks or {}).items()}}
    if channel_masks:
        payload["channel_masks"] = {k: v.detach().cpu().bool() for k, v in channel_masks.items()}
    save(path, payload)


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


def load_model_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a model checkpoint (a path or ``zoo:NAME``) and check its format and required metadata."""
    path = resolve(path)
    payload = load(path)
    if payload.get("format") != FORMAT or "state_dict" not in payload:
        raise UserError(f"'{path}' is not an abcrown_plugins model checkpoint "
                        f"(format {payload.get('format')!r}, expected {FORMAT!r})")
    meta = payload.get("meta", {})
    missing = [k for k in ("arch", "dataset", "num_classes", "channels", "input_size", "mean", "std")
               if k not in meta]
    if missing:
        raise UserError(f"checkpoint '{path}' lacks metadata {missing}; re-create it with abcrown-plugins")
    return payload
