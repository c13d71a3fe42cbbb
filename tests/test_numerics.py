"""The shared non-finite door and the one logits tolerance (relative to the logits' scale)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abcrown_plugins.errors import UserError
from abcrown_plugins.numerics import LOGITS_ATOL, LOGITS_RTOL, compare_logits, logits_tolerance, nonfinite, \
    require_finite


def test_nonfinite_names_the_first_bad_tensor_and_skips_masks():
    t = {"mask": torch.ones(3, dtype=torch.bool), "a": torch.zeros(4), "b": torch.tensor([1.0, float("nan"), 2.0]),
         "c": torch.tensor([float("inf")])}
    assert nonfinite(t) == ("b", 1, 3)
    assert nonfinite({"a": torch.zeros(2), "n": np.arange(3)}) is None
    assert nonfinite({"x": np.array([np.inf])}) == ("x", 1, 1)
    with pytest.raises(UserError, match=r"^net has non-finite values \(NaN or inf\) in 'b' \(1 of 3 entries\); fix$"):
        require_finite(t, "net", "fix")


def test_tolerance_scales_with_the_logits():
    ref = np.array([[49.0, -3.0, 1.0]])
    assert logits_tolerance(ref) == pytest.approx(LOGITS_ATOL + LOGITS_RTOL * 49.0)
    # the shipped resnet's float32 rounding difference: 1.9e-5 at logits ~49 (4e-7 relative) passes
    assert compare_logits(ref, ref + 1.9e-5, "x") == pytest.approx(1.9e-5)
    # ... while the same absolute difference at logits ~1 is a real disagreement
    with pytest.raises(UserError, match="differ by"):
        compare_logits(np.array([[1.0, 0.5]]), np.array([[1.0 + 3e-5, 0.5]]), "x")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("side", ["reference", "compared"])
def test_non_finite_logits_never_compare_equal(bad, side):
    good = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    broken = good.clone()
    broken[1, 0] = bad
    ref, got = (broken, broken) if side == "reference" else (good, broken)
    with pytest.raises(UserError, match=f"the {side} logits are not finite"):
        compare_logits(ref, got, "onnx vs torch")


def test_shape_mismatch_is_refused():
    with pytest.raises(UserError, match="shape"):
        compare_logits(np.zeros((2, 3)), np.zeros((2, 4)), "x")


def test_within_tolerance_means_same_argmax_outside_near_ties():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        ref = torch.randn(8, 10, generator=gen).double() * 50
        tol = logits_tolerance(ref)
        got = ref + (torch.rand(8, 10, generator=gen).double() * 2 - 1) * tol
        compare_logits(ref, got, "x")
        top2 = ref.topk(2, dim=1).values
        decided = (top2[:, 0] - top2[:, 1]) > 2 * tol
        assert bool((ref.argmax(1) == got.argmax(1))[decided].all())
