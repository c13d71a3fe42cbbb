"""Numeric kinds refuse non-finite and overflowing values, in one line that names the key and quotes little."""

from __future__ import annotations

import pytest

from abcrown_plugins.config import build_config, load_config, parse_override_args
from abcrown_plugins.config.kinds import Eps, Float, Int, KindError, parse_value, quote
from abcrown_plugins.errors import UserError

NON_FINITE = ["nan", "inf", "-inf", ".nan", ".inf", "-.inf", "1e400", "1.0e400", "1e999999999", "9" * 400,
              float("nan"), float("inf"), 10 ** 400, "1" * 400 + "/3"]


@pytest.mark.parametrize("kind", [Float(), Float(min=0), Eps()], ids=["Float", "Float(min=0)", "Eps"])
@pytest.mark.parametrize("value", NON_FINITE, ids=lambda v: quote(v, 20))
def test_real_kinds_refuse_non_finite_values(kind, value):
    with pytest.raises(KindError) as e:
        kind.parse(value)
    assert len(str(e.value)) < 200 and "\n" not in str(e.value)


@pytest.mark.parametrize("value", [10 ** 400, "9" * 400, 2 ** 63, -(2 ** 63)], ids=["10**400", "400 digits",
                                                                                    "2**63", "-2**63"])
def test_int_refuses_integers_beyond_64_bits(value):
    with pytest.raises(KindError, match="64-bit"):
        Int().parse(value)


@pytest.mark.parametrize("key", ["training.lr", "training.eps", "verification.eps", "smoothing.sigma",
                                 "verification.timeout"])
@pytest.mark.parametrize("raw", ["nan", ".inf", "1e400", "9" * 400])
def test_config_names_key_and_quotes_at_most_80_characters(key, raw):
    with pytest.raises(UserError) as e:
        build_config({}, parse_override_args([f"--{key}", raw]))
    msg = str(e.value)
    assert key in msg and "finite" in msg and "\n" not in msg
    assert len(msg) < len(key) + 200  # the 400-digit value is quoted in at most ~80 characters


def test_non_finite_in_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  lr: .nan\nverification:\n  eps: 1.0e400\n")
    with pytest.raises(UserError, match=r"training\.lr.*finite"):
        load_config(p)


def test_finite_values_still_parse():
    assert Float(min=0).parse("1e-3") == 1e-3 and Eps().parse("2/255") == 2 / 255 and Eps().parse(0) == 0.0
    assert Int().parse(2 ** 62) == 2 ** 62 and Float().parse(10 ** 300) == 1e300


def test_negative_eps_has_the_projects_own_message():
    with pytest.raises(KindError, match="non-negative radius such as 2/255, got '-1/255'"):
        Eps().parse("-1/255")


def test_quote_is_short_even_for_a_huge_nested_value():
    bomb: list = []
    for _ in range(30):  # what a YAML alias bomb expands to: 2**30 leaves
        bomb = [bomb, bomb]
    assert len(quote(bomb)) <= 83 and len(quote("x" * 10 ** 6)) <= 83 and len(quote(10 ** 5000)) <= 83


def test_parse_value_is_a_user_error_naming_the_flag():
    with pytest.raises(UserError, match=r"^--timeout: expected a finite float >= 0, got 'nan'$"):
        parse_value(Float(min=0), "nan", "--timeout")
    with pytest.raises(UserError, match="--timeout"):
        parse_value(Float(min=0), float("nan"), "--timeout")
    assert parse_value(Float(min=0), 60.0, "--timeout") == 60.0
