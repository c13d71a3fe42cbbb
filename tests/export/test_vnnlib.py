import numpy as np
import pytest
import torch

from abcrown_plugins.export import read_robustness_vnnlib, write_robustness_vnnlib


def test_roundtrip_box_is_clipped_and_exact(tmp_path):
    x = torch.rand(3, 4, 4)
    x[0, 0, 0], x[0, 0, 1] = 0.001, 0.999
    eps = 2 / 255
    p = tmp_path / "p.vnnlib"
    write_robustness_vnnlib(p, x, label=3, eps=eps, num_classes=10)
    prop = read_robustness_vnnlib(p)
    flat = x.double().flatten().numpy()
    assert prop.label == 3 and prop.num_classes == 10
    np.testing.assert_array_equal(prop.lower, np.clip(flat - eps, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(prop.upper, np.clip(flat + eps, 0, 1).astype(np.float32))
    assert prop.lower[0] == 0.0 and prop.upper[1] == 1.0


def test_structure_one_clause_per_or_term(tmp_path):
    p = tmp_path / "p.vnnlib"
    write_robustness_vnnlib(p, torch.zeros(1, 2, 2), label=0, eps=0.1, num_classes=4)
    text = p.read_text()
    assert text.count("(declare-const X_") == 4 and text.count("(declare-const Y_") == 4
    assert text.count("(assert (<= X_") == 4 and text.count("(assert (>= X_") == 4
    terms = [line.strip() for line in text.splitlines() if line.strip().startswith("(and")]
    assert terms == ["(and (>= Y_1 Y_0))", "(and (>= Y_2 Y_0))", "(and (>= Y_3 Y_0))"]
    assert text.count("(assert (or") == 1


def test_foreign_vnnlib_is_refused(tmp_path):
    p = tmp_path / "p.vnnlib"
    p.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1.0))\n")
    with pytest.raises(ValueError, match="not a local-robustness property"):
        read_robustness_vnnlib(p)
