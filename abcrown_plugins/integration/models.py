"""Models from checkpoints as verifiers see them: folded weights, compacted when channel-pruned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from abcrown_plugins import checkpoints
from abcrown_plugins.errors import UserError
from abcrown_plugins.models import model_from_checkpoint

def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint path (``zoo:NAME`` means ``model_zoo/checkpoints/NAME``) that exists, else UserError."""
    p = checkpoints.resolve(path)
    if not p.is_file():
        raise UserError(f"checkpoint '{path}' not found (looked at {p.resolve()})")
    return p


def checkpoint_model(payload: dict[str, Any], compact: bool = True) -> tuple[nn.Module, bool]:
    """The model of a checkpoint in eval mode, and whether it was compacted.

    Weights are loaded strictly (masks are already folded into them). A
    checkpoint with ``channel_masks`` describes a channel-pruned network; with
    ``compact`` it is rebuilt physically smaller (outputs equal the masked one).
    """
    model = model_from_checkpoint(payload)
    cmask = payload.get("channel_masks") or {}
    if not (compact and cmask):
        return model, False
    from abcrown_plugins.pruning.compaction import compact as compact_model

    return compact_model(model, cmask).eval(), True
