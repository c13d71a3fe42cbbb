"""Finite numbers and the one tolerance for "the same logits, computed twice".

Two doors every number of the project passes through:

* :func:`nonfinite` / :func:`require_finite`: NaN or infinity anywhere in a
  tensor (or a dict of tensors: weights, buffers, logits) is refused with one
  line naming the tensor, so a broken network never gets a certificate, a
  benchmark or a verified accuracy.
* :func:`compare_logits`: two computations of the same network's logits (torch
  and onnxruntime, a dense and a compacted network, ...) agree when both are
  finite and every entry differs by at most ``tol = atol + rtol * max|reference|``.
  That bound is also the argmax guarantee: wherever the reference's top-two
  margin exceeds ``2 * tol`` the two argmaxes are equal (closer margins are ties
  within rounding, where either class is right), so a separate argmax test could
  never fail once the bound holds.

Why relative: float32 evaluation orders (oneDNN vs MLAS kernels, BatchNorm
folded or not, channels removed) round differently, and the rounding error of a
dot product scales with the magnitudes it accumulates, so an absolute
tolerance that fits logits of ~1 fails logits of ~50 (the shipped
``resnet_small_synthetic_slim`` differs by 1.9e-5 between torch and
onnxruntime: 4e-7 relative). :data:`LOGITS_RTOL` = 1e-5 is ~84 float32 epsilons
(2^-23 = 1.2e-7): 25x the largest relative difference measured on the shipped
checkpoints and on the differential engine (4e-7, whose near-tie guard uses the
same 1e-5, :data:`abcrown_plugins.differential.TIE_TOL`); :data:`LOGITS_ATOL` =
1e-5 keeps logits near 0 from failing on the last bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from abcrown_plugins.errors import UserError

__all__ = ["LOGITS_ATOL", "LOGITS_RTOL", "compare_logits", "logits_tolerance", "nonfinite", "require_finite"]

#: Relative part of the logits tolerance, in units of max |reference logit| (module docstring).
LOGITS_RTOL = 1e-5
#: Absolute part of the logits tolerance.
LOGITS_ATOL = 1e-5


def _array(x: Any) -> np.ndarray:
    """A float64 numpy copy of a tensor (any device, with or without grad), array or number."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def nonfinite(tensors: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """The first ``(name, non-finite entries, entries)`` among floating tensors/arrays, or None if all are finite.

    Integer and bool tensors (masks, counters) are finite by construction and skipped.
    """
    for name, t in tensors.items():
        if hasattr(t, "is_floating_point"):
            if not (t.is_floating_point() or t.is_complex()):
                continue
            bad = int((~t.detach().isfinite()).sum())
            total = t.numel()
        else:
            a = np.asarray(t)
            if not np.issubdtype(a.dtype, np.inexact):
                continue
            bad, total = int((~np.isfinite(a)).sum()), a.size
        if bad:
            return str(name), bad, total
    return None


def require_finite(tensors: Mapping[str, Any], what: str, fix: str) -> None:
    """Raise :class:`UserError` ``"{what} has non-finite values (NaN or inf) in 'NAME' (k of n entries); {fix}"``."""
    found = nonfinite(tensors)
    if found is not None:
        name, bad, total = found
        raise UserError(f"{what} has non-finite values (NaN or inf) in '{name[:80]}' ({bad} of {total} entries); "
                        f"{fix}")


def logits_tolerance(reference: Any, atol: float = LOGITS_ATOL, rtol: float = LOGITS_RTOL) -> float:
    """``atol + rtol * max|reference|``: how far two float32 computations of these logits may differ."""
    ref = _array(reference)
    return float(atol + rtol * (np.abs(ref).max() if ref.size else 0.0))


def compare_logits(reference: Any, other: Any, what: str, atol: float = LOGITS_ATOL,
                   rtol: float = LOGITS_RTOL) -> float:
    """Check that ``other`` computes the logits ``reference`` does (module docstring); returns max |difference|.

    ``reference``, ``other``: ``(batch, classes)`` (or one row), torch tensors or numpy
    arrays. ``what`` names the two computations in the error (e.g. ``"onnxruntime
    vs torch"``). Raises :class:`UserError` when either holds NaN/inf or an entry
    differs by more than :func:`logits_tolerance` (which also bounds argmax
    disagreement to near ties: module docstring).
    """
    ref, got = _array(reference), _array(other)
    if ref.shape != got.shape:
        raise UserError(f"{what}: logits of shape {got.shape} where {ref.shape} was expected")
    for name, a in (("reference", ref), ("compared", got)):
        if not np.isfinite(a).all():
            raise UserError(f"{what}: the {name} logits are not finite (NaN or inf); the network's weights or "
                            f"inputs are broken")
    tol = logits_tolerance(ref, atol, rtol)
    worst = float(np.abs(ref - got).max()) if ref.size else 0.0
    if worst > tol:
        raise UserError(f"{what}: logits differ by {worst:.3g} > tolerance {tol:.3g} ({atol:g} + {rtol:g} x max "
                        f"|logit| {np.abs(ref).max():.3g}); the two computations disagree")
    return worst
