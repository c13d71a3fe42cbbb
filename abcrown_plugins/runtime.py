"""Run-time plumbing shared by the CLI and pipelines: device, threads, seeds, progress bars."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Iterable, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from abcrown_plugins.errors import UserError

T = TypeVar("T")

_PROGRESS = {"enabled": True}


def set_progress(enabled: bool) -> None:
    _PROGRESS["enabled"] = enabled


def progress(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterable[T]:
    """A tqdm bar on stderr (off with ``general.progress: false``)."""
    return tqdm(iterable, desc=desc, total=total, leave=leave, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5, disable=not _PROGRESS["enabled"])


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("general.device is cuda but no CUDA device is available; use --general.device cpu")
    return torch.device(name)


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def claim_run_dir(out: Path, config_hash: str, config_text: str, name: str, kind: str) -> None:
    """Create the run folder ``out``, or accept it when it holds a ``kind`` run of the same config.

    Writes ``config.yaml`` and a ``run.json`` marker (atomically). A folder holding
    another config's run, or anything else, is refused: resuming there would mix runs.
    """
    from abcrown_plugins.checkpoints import atomic_write_text

    marker = out / "run.json"
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous.get("config_hash") != config_hash or previous.get("kind", "pruning") != kind:
            raise UserError(f"output folder '{out}' holds another run ({previous.get('kind', 'pruning')}, config hash "
                            f"{previous.get('config_hash')}; this is {kind}, {config_hash}); pass another --output "
                            "or delete it")
        return
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder '{out}' is not empty and holds no abcrown-plugins run; pass another --output")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", config_text)
    atomic_write_text(marker, json.dumps({"config_hash": config_hash, "name": name, "kind": kind}) + "\n")
