"""Random YAML values and random YAML text as configs: exit 0 or one error line, and a printed config reloads."""

from __future__ import annotations

import uuid

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from abcrown_plugins.config import load_config
from abcrown_plugins.config.core import all_keys
from abcrown_plugins.config.schema import SECTION_BY_NAME

from .helpers import FUZZ, assert_clean_exit, run_cli

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["2/255", "-1/255", "1/0", "1e400", "nan", "inf", "auto", "cpu", "ibp", "[1, 2]", "",
                              "null", "~", "0x10", "1_000"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
KEYS = st.sampled_from(all_keys())


@st.composite
def trees(draw):
    """A config tree: mostly real keys with random values, sometimes unknown sections, keys or shapes."""
    tree: dict = {}
    for dotted in draw(st.lists(KEYS, max_size=4)):
        section, key = dotted.split(".", 1)
        tree.setdefault(section, {})[key] = draw(VALUES)
    if draw(st.booleans()):
        tree[draw(st.sampled_from(list(SECTION_BY_NAME)) | st.text(max_size=8))] = draw(VALUES)
    return tree


def _config(tmp_path, text: str):
    path = tmp_path / f"{uuid.uuid4().hex}.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


@settings(FUZZ, max_examples=300)
@given(tree=trees())
def test_random_values_in_a_config(fuzz_root, tree):
    text = yaml.safe_dump(tree, allow_unicode=True)
    path = _config(fuzz_root, text)
    code, out, err = run_cli(["config", str(path)], stdout=True)
    assert_clean_exit(code, err, ["config", str(path)])
    if code == 0:  # what `config` prints is a config that loads to the same settings
        again = _config(fuzz_root, out)
        assert load_config(again) == load_config(path)


@settings(FUZZ, max_examples=300)
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_random_text_as_a_config(fuzz_root, text):
    path = _config(fuzz_root, text)
    code, _, err = run_cli(["config", str(path)], stdout=True)
    assert_clean_exit(code, err, ["config", str(path)])


@settings(FUZZ, max_examples=300)
@given(pairs=st.lists(st.tuples(KEYS | st.text(max_size=10), VALUES.map(lambda v: yaml.safe_dump(v).strip())
                                | st.text(max_size=12)), max_size=3))
def test_random_overrides_on_the_command_line(pairs):
    argv = ["config"] + [f"--{k}={v}" for k, v in pairs]
    code, _, err = run_cli(argv, stdout=True)
    assert_clean_exit(code, err, argv)
