"""VNNLIB 1.0 local-robustness properties: writing, and reading our own back.

A property for image ``x`` (C,H,W, pixels in [0,1]) with label ``y`` and L-inf
radius ``eps`` declares ``X_0..X_{CHW-1}`` (flattened in NCHW order) and
``Y_0..Y_{K-1}``, bounds each input to ``clip(x ± eps, 0, 1)`` and states the
*violation*: some other logit is at least the label's,
``(or (and (>= Y_j Y_y)) ...)`` over ``j != y`` (one clause per OR-term). So
``unsat`` means robust and ``sat`` comes with a witness.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from abcrown_plugins.export.generate_properties_template import robustness_vnnlib
from abcrown_plugins.fileio import atomic_write_text


def write_robustness_vnnlib(path: str | Path, x: torch.Tensor, label: int, eps: float, num_classes: int,
                            data_min: float = 0.0, data_max: float = 1.0, comment: str = "") -> None:
    """Write the property of image ``x`` atomically (the text: :func:`.generate_properties_template.robustness_vnnlib`,
    the code every benchmark folder carries)."""
    flat = x.detach().double().flatten().cpu().numpy()
    atomic_write_text(path, robustness_vnnlib(flat, label, eps, num_classes, data_min, data_max, comment))


@dataclass(frozen=True)
class RobustnessProperty:
    lower: np.ndarray   # flattened input box
    upper: np.ndarray
    label: int
    num_classes: int


_BOUND = re.compile(r"\(assert\s+\((<=|>=)\s+X_(\d+)\s+([-+0-9.eE]+)\)\)")
_TERM = re.compile(r"\(and\s+\(>=\s+Y_(\d+)\s+Y_(\d+)\)\)")
_DECL_Y = re.compile(r"\(declare-const\s+Y_(\d+)\s+Real\)")


def read_robustness_vnnlib(path: str | Path) -> RobustnessProperty:
    """Parse a property in the form :func:`write_robustness_vnnlib` writes (ValueError otherwise)."""
    text = Path(path).read_text()
    bounds = _BOUND.findall(text)
    n = 1 + max(int(i) for _, i, _ in bounds) if bounds else 0
    lower, upper = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    for op, i, v in bounds:
        (upper if op == "<=" else lower)[int(i)] = float(v)
    terms = _TERM.findall(text)
    labels = {int(y) for _, y in terms}
    if n == 0 or np.isnan(lower).any() or np.isnan(upper).any() or len(labels) != 1:
        raise ValueError(f"{path}: not a local-robustness property in this project's VNNLIB form")
    return RobustnessProperty(lower, upper, labels.pop(), len(_DECL_Y.findall(text)))
