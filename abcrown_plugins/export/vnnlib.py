"""VNN-LIB local-robustness properties, 1.0 and 2.0: writing, and reading those of any VNN-COMP benchmark.

A property of image ``x`` (C,H,W) with label ``y`` bounds every input to a box
(``clip(x ± eps, 0, 1)`` when drawn by this project) and states the *violation*:
some other logit is at least the label's, ``(or (and (>= Y_j Y_y)) ...)`` over
``j != y`` (one clause per OR-term). So ``unsat`` means robust and ``sat`` comes
with a witness.

Writing: VNN-LIB 1.0 (``(declare-const X_i Real)``, flat NCHW indices; what
α,β-CROWN reads) or 2.0 (``(vnnlib-version <2.0>)``, one ``declare-network`` with
tensor-typed input ``X float32 [1,C,H,W]`` and output ``Y float32 [1,K]``,
indexed ``X[0,c,h,w]``). The text is made by
:mod:`.generate_properties_template` (the code every benchmark folder carries,
so it cannot import this package); this module is the package's entry point.

Reading (:func:`read_robustness_vnnlib`, :func:`parse_robustness`): the
local-robustness subset of both versions, in the forms real VNN-COMP benchmarks
use: declarations; input bounds ``(assert (<= X_i c))``/``(>= ...)`` (either side,
strict or not, alone or in an ``and``); the output part as an ``or`` of ``and``s
of one comparison each, a single comparison, or several asserts, where every
comparison says some ``Y_j`` is at least ``Y_label`` (``(>= Y_j Y_l)`` or
``(<= Y_l Y_j)``) and every ``j != label`` appears: mnist_fc, cifar2020,
cifar10_resnet, oval21, eran, verivital. A file may be gzipped (``.gz``). Anything
else (targeted properties, input disjunctions, constraints on a single logit,
arithmetic) is refused with one line saying so (:class:`VnnlibError`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from abcrown_plugins.export.generate_properties_template import VNNLIB_VERSIONS, box_vnnlib, robustness_vnnlib
from abcrown_plugins.fileio import atomic_write_text
from abcrown_plugins.vnnlib import (
    RobustnessProperty,
    VnnlibError,
    parse_robustness,
    read_robustness_vnnlib,
    read_vnnlib_text,
)

__all__ = ["RobustnessProperty", "VNNLIB_VERSIONS", "VnnlibError", "box_vnnlib", "parse_robustness",
           "read_robustness_vnnlib", "read_vnnlib_text", "robustness_vnnlib", "write_box_vnnlib",
           "write_robustness_vnnlib"]


def write_robustness_vnnlib(path: str | Path, x: torch.Tensor, label: int, eps: float, num_classes: int,
                            data_min: float = 0.0, data_max: float = 1.0, comment: str = "",
                            version: int = 1) -> None:
    """Write the property of image ``x`` (C,H,W) atomically, box ``clip(x ± eps)`` rounded to float32.

    The text: :func:`.generate_properties_template.robustness_vnnlib`.
    """
    flat = x.detach().double().flatten().cpu().numpy()
    atomic_write_text(path, robustness_vnnlib(flat, label, eps, num_classes, data_min, data_max, comment,
                                              tuple(x.shape), version))


def write_box_vnnlib(path: str | Path, lower: np.ndarray, upper: np.ndarray, label: int, num_classes: int,
                     input_shape: tuple[int, ...] | None = None, version: int = 1, comment: str = "") -> None:
    """Write the property "the box [lower, upper] keeps ``label``" atomically, the box exactly as given (float64)."""
    atomic_write_text(path, box_vnnlib(lower, upper, label, num_classes, input_shape, version, comment))
