"""VNN-LIB 1.0 and 2.0: the forms of real VNN-COMP benchmarks read back exactly; 2.0 checked by the official parser."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from abcrown_plugins.errors import UserError
from abcrown_plugins.export import VnnlibError, parse_robustness, read_robustness_vnnlib, write_box_vnnlib
from abcrown_plugins.export.generate_properties_template import box_vnnlib, number

LOWER = np.array([0.0, 0.25, 0.0392156862745098, 0.98])
UPPER = np.array([0.03, 0.5, 0.0784313725490196, 1.0])
LABEL, K = 1, 3


def declarations(n: int = 4, k: int = K) -> str:
    return "\n".join([f"(declare-const X_{i} Real)" for i in range(n)] + [f"(declare-const Y_{j} Real)"
                                                                        for j in range(k)])


def bounds(lower=LOWER, upper=UPPER) -> str:
    return "\n".join(f"(assert (<= X_{i} {float(u)!r}))\n(assert (>= X_{i} {float(v)!r}))"
                     for i, (v, u) in enumerate(zip(lower, upper)))


OUT_GE = "(assert (or\n    (and (>= Y_0 Y_1))\n    (and (>= Y_2 Y_1))\n))"

# The forms of real benchmarks, written small: (name, text).
REAL_FORMS = [
    # mnist_fc, cifar10_resnet, verivital: a comment, declarations, bounds, an OR of one-comparison ANDs
    ("mnist_fc", f"; Mnist property with label: 1.\n\n{declarations()}\n\n; Input constraints:\n{bounds()}\n\n"
                 f"; Output constraints:\n{OUT_GE}\n"),
    # cifar2020, eran, sri_resnet: section comments, tabs, 8-digit constants
    ("cifar2020", "; Spec for sample id 0 and epsilon 0.00784\n\n; Definition of input variables\n"
                  + "\n".join(f"(declare-const X_{i} Real)" for i in range(4))
                  + "\n\n; Definition of output variables\n"
                  + "\n".join(f"(declare-const Y_{j} Real)" for j in range(3))
                  + f"\n\n; Definition of input constraints\n{bounds()}\n\n; Definition of output constraints\n"
                  "(assert (or\n\t(and (>= Y_0 Y_1))\n\t(and (>= Y_2 Y_1))\n))\n"),
    # oval21: the label on the left of <=
    ("oval21", f"; Adversarial robustness property for network cifar_base_kw.\n{declarations()}\n{bounds()}\n"
               "(assert (or\n\t(and (<= Y_1 Y_0))\n\t(and (<= Y_1 Y_2))\n))\n"),
    # bounds as one AND per input, constants on either side, SMT-LIB negation, exponents, integers, strictness
    ("mixed_bounds", f"{declarations()}\n"
                     "(assert (and (>= X_0 0) (<= X_0 3e-2)))\n"
                     "(assert (and (<= 0.25 X_1) (>= 0.5 X_1)))\n"
                     "(assert (> X_2 0.0392156862745098))\n(assert (< X_2 0.0784313725490196))\n"
                     "(assert (>= X_3 0.98)) (assert (<= X_3 1))\n"
                     "(assert (>= X_3 (- 0.5)))\n"  # a looser bound: the tightest one wins
                     "(assert (or (and (>= Y_0 Y_1)) (and (> Y_2 Y_1))))\n"),
    # without the single-clause ANDs
    ("bare_or", f"{declarations()}\n{bounds()}\n(assert (or (>= Y_0 Y_1) (>= Y_2 Y_1)))\n"),
    # VNN-LIB 2.0 with tensor indices, as written by hand and as the official printer spaces them
    ("v2", "(vnnlib-version <2.0>)\n(declare-network f\n  (declare-input X float32 [1,1,2,2])\n"
           "  (declare-output Y float32 [1,3]))\n"
           + "\n".join(f"(assert (<= X[0,0,{i // 2},{i % 2}] {number(u)}))\n"
                       f"(assert (>= X [0, 0, {i // 2}, {i % 2}] {number(v)}))" for i, (v, u) in
                       enumerate(zip(LOWER, UPPER)))
           + "\n(assert (or (and (>= Y[0,0] Y[0,1])) (and (>= Y [0, 2] Y[0,1]))))\n"),
]


@pytest.mark.parametrize("name,text", REAL_FORMS, ids=[n for n, _ in REAL_FORMS])
def test_real_benchmark_forms_read_to_the_same_box_and_label(name, text):
    prop = parse_robustness(text, name)
    assert prop.label == LABEL and prop.num_classes == K
    assert prop.lower.dtype == np.float64
    np.testing.assert_array_equal(prop.lower, LOWER)
    np.testing.assert_array_equal(prop.upper, UPPER)
    assert prop.version == (2 if name == "v2" else 1)
    assert prop.input_shape == ((1, 1, 2, 2) if name == "v2" else None)


def test_two_classes_with_a_single_comparison():
    prop = parse_robustness(f"{declarations(2, 2)}\n{bounds(LOWER[:2], UPPER[:2])}\n(assert (>= Y_1 Y_0))\n")
    assert (prop.label, prop.num_classes) == (0, 2)


def test_gzipped_files_are_read(tmp_path):
    path = tmp_path / "p.vnnlib.gz"
    path.write_bytes(gzip.compress(REAL_FORMS[0][1].encode()))
    prop = read_robustness_vnnlib(path)
    assert prop.label == LABEL and np.array_equal(prop.upper, UPPER)


REFUSED = {
    # marabou-cifar10: a targeted property (Y_t above all), which names no true label
    "targeted": (f"{declarations()}\n{bounds()}\n(assert (>= Y_1 Y_0))\n(assert (>= Y_1 Y_2))\n", "targeted"),
    # nn4sys: input and output in one disjunction
    "input_or": (f"{declarations(1, 1)}\n(assert (or (and (>= X_0 1) (<= X_0 2) (<= Y_0 -5))))\n", "mixes"),
    # acas xu: a threshold on one logit
    "threshold": (f"{declarations()}\n{bounds()}\n(assert (>= Y_0 3.99))\n", "single logit"),
    "missing_bound": (f"{declarations()}\n{bounds()}\n".replace("(assert (>= X_2 0.0392156862745098))", "")
                      + OUT_GE, "no lower bound"),
    "empty_box": (f"{declarations()}\n{bounds()}\n(assert (>= X_0 0.5))\n{OUT_GE}", "empty"),
    "missing_class": (f"{declarations(4, 4)}\n{bounds()}\n{OUT_GE}", "leaves out classes [3]"),
    "two_labels": (f"{declarations()}\n{bounds()}\n(assert (or (>= Y_0 Y_1) (>= Y_1 Y_2)))\n", "several classes"),
    "input_disjunction": (f"{declarations()}\n{bounds()}\n(assert (or (<= X_0 0.01) (>= X_0 0.02)))\n{OUT_GE}",
                          "disjunction over inputs"),
    "arithmetic": (f"{declarations()}\n{bounds()}\n(assert (>= (- Y_0 Y_1) 0))\n", "arithmetic"),
    "no_output": (f"{declarations()}\n{bounds()}\n", "no output constraint"),
    "unbalanced": (f"{declarations()}\n(assert (<= X_0 1.0)\n", "unbalanced"),
    "bad_symbol": (f"{declarations()}\n(assert (<= X_0 one))\n", "unknown symbol"),
    "v2_index_outside": ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X float32 [1,2]) "
                         "(declare-output Y float32 [1,2]))\n(assert (<= X[0,5] 1.0))\n", "outside its declared"),
    "v2_hidden": ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X float32 [1,2]) "
                  "(declare-hidden H float32 [1,2] \"h\") (declare-output Y float32 [1,2]))\n", "hidden"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_is_not_local_robustness_is_one_line(case):
    text, words = REFUSED[case]
    with pytest.raises(VnnlibError) as e:
        parse_robustness(text, f"bench/{case}.vnnlib")
    message = str(e.value)
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    assert words in message and f"bench/{case}.vnnlib" in message and "\n" not in message, message


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(VnnlibError, match="not found"):
        read_robustness_vnnlib(tmp_path / "absent.vnnlib")


def random_box(seed: int, shape=(3, 4, 4)):
    rng = np.random.default_rng(seed)
    centre = rng.random(shape)
    eps = rng.choice([0.0, 1e-7, 2 / 255, 0.3])
    lower = np.clip(centre - eps, 0, 1)
    upper = np.clip(centre + eps, 0, 1)
    lower.flat[0], upper.flat[0] = -1.5e-5, 123456.75  # exponent-prone values, written as plain decimals
    return lower, upper


@pytest.mark.parametrize("seed", range(4))
def test_one_and_two_of_the_same_property_read_to_the_same_box_and_label(seed, tmp_path):
    lower, upper = random_box(seed)
    label, k = seed % 10, 10
    props = []
    for version in (1, 2):
        path = tmp_path / f"v{version}.vnnlib"
        write_box_vnnlib(path, lower.ravel(), upper.ravel(), label, k, lower.shape, version)
        props.append(read_robustness_vnnlib(path))
    v1, v2 = props
    assert (v1.version, v2.version) == (1, 2) and v2.input_shape == (1, *lower.shape)
    for p in props:
        assert p.label == label and p.num_classes == k
        np.testing.assert_array_equal(p.lower, lower.ravel())  # float64, exactly
        np.testing.assert_array_equal(p.upper, upper.ravel())
    assert "e" not in "".join(line.split()[-1] for line in (tmp_path / "v2.vnnlib").read_text().splitlines()
                              if line.startswith("(assert (<= X"))


def official_box(text: str):
    """The input box, label and declared shapes of a VNN-LIB 2.0 text, as the official parser (PyPI vnnlib) sees it."""
    vnnlib = pytest.importorskip("vnnlib")
    query = vnnlib.parse_query_string(text)
    (network,) = query.networks
    (x,), (y,) = network.inputs, network.outputs
    n = int(np.prod(x.shape))
    lower, upper = np.full(n, np.nan), np.full(n, np.nan)
    labels, others = set(), set()
    for assertion in query.assertions:
        for conj in assertion.expr.to_dnf():
            for cmp in conj:
                lhs, rhs = cmp.lhs, cmp.rhs
                if isinstance(rhs, vnnlib.Var):  # output: Y[0,j] >= Y[0,label]
                    assert isinstance(cmp, vnnlib.GreaterEqual) and len(conj) == 1
                    others.add(lhs.indices[-1])
                    labels.add(rhs.indices[-1])
                else:
                    flat = int(np.ravel_multi_index(lhs.indices, x.shape))
                    value = float(rhs.lexeme)
                    (upper if isinstance(cmp, vnnlib.LessEqual) else lower)[flat] = value
    assert len(labels) == 1
    return lower, upper, labels.pop(), others, tuple(x.shape), tuple(y.shape)


@pytest.mark.parametrize("seed", range(3))
def test_written_vnnlib_2_passes_the_official_parser_with_the_same_box(seed):
    lower, upper = random_box(seed, (1, 3, 3))
    label, k = 2, 4
    text = box_vnnlib(lower.ravel(), upper.ravel(), label, k, lower.shape, version=2, comment="a test\nproperty")
    o_lower, o_upper, o_label, others, x_shape, y_shape = official_box(text)
    assert x_shape == (1, 1, 3, 3) and y_shape == (1, k)
    np.testing.assert_array_equal(o_lower, lower.ravel())
    np.testing.assert_array_equal(o_upper, upper.ravel())
    assert o_label == label and others == {0, 1, 3}
    ours = parse_robustness(text)
    np.testing.assert_array_equal(ours.lower, o_lower)
    assert ours.label == o_label


def test_two_classes_in_vnnlib_2_pass_the_official_parser():
    o_lower, _, o_label, others, _, _ = official_box(box_vnnlib(np.zeros(2), np.ones(2), 1, 2, version=2))
    assert o_label == 1 and others == {0} and o_lower.tolist() == [0.0, 0.0]


def test_numbers_are_plain_decimals_that_read_back_exactly():
    for v in [0.0, -0.0, 1.0, 1e-05, 5e-324, 1.2345678901234568e17, float(np.float32(0.1)), 2 / 255]:
        text = number(v)
        assert "e" not in text.lower() and "." in text and float(text) == v


def test_float32_boxes_of_drawn_properties_are_unchanged(tmp_path):
    from abcrown_plugins.export import write_robustness_vnnlib

    x = torch.rand(1, 3, 3, dtype=torch.float64)
    for version in (1, 2):
        path = tmp_path / f"d{version}.vnnlib"
        write_robustness_vnnlib(path, x, 0, 2 / 255, 3, version=version)
        prop = read_robustness_vnnlib(path)
        flat = x.flatten().numpy()
        np.testing.assert_array_equal(prop.lower, np.clip(flat - 2 / 255, 0, 1).astype(np.float32))
        assert prop.input_shape == (None if version == 1 else (1, 1, 3, 3))
