"""Run-time plumbing shared by the CLI and experiments: device, threads, seeds, progress bars."""

from __future__ import annotations

import random
import sys
from typing import Iterable, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from abcrown_plugins.errors import UserError

T = TypeVar("T")

_PROGRESS = {"enabled": True}


def set_progress(enabled: bool) -> None:
    _PROGRESS["enabled"] = enabled


def progress_enabled() -> bool:
    return _PROGRESS["enabled"]


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
