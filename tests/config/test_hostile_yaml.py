"""Hostile YAML (a "billion laughs" alias bomb, huge numbers, deep nesting) is one short line, quickly."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from abcrown_plugins.cli import main


def laughs(levels: int = 9) -> str:
    """A list whose last entry expands to 9**levels strings through aliases (a few hundred bytes of YAML)."""
    rows = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefghi", "bcdefghi"[:levels - 1]):
        rows.append(f"&{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "[" + ",\n  ".join(rows) + "]"


BOMBS = {
    "section body": "training: {bomb}\n",
    "int key": "training:\n  epochs: {bomb}\n",
    "list key": "smoothing:\n  radii: {bomb}\n",
    "str list key": "transfer:\n  tasks: {bomb}\n",
}


CHILD = """
import contextlib, io, json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from abcrown_plugins.cli import main
out = []
for path in sys.argv[1:]:
    err, start = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = main(["config", path])
    out.append([code, err.getvalue(), time.perf_counter() - start])
print(json.dumps(out))
"""


def test_an_alias_bomb_is_reported_in_one_short_line(tmp_path):
    """Each bomb in a child with at most 2 GiB of address space: repr of the value would need far more."""
    paths = []
    for i, body in enumerate(BOMBS.values()):
        paths.append(tmp_path / f"bomb{i}.yaml")
        paths[-1].write_text(body.format(bomb=laughs()))
        assert len(paths[-1].read_bytes()) < 600
    r = subprocess.run([sys.executable, "-c", CHILD.format(limit=2 << 30), *map(str, paths)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for where, (code, err, seconds) in zip(BOMBS, json.loads(r.stdout.strip().splitlines()[-1])):
        err = err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and len(err) < 400, (where, err[:1000])
        assert seconds < 5, (where, seconds)


@pytest.mark.parametrize("text,expected", [
    ("training:\n  epochs: " + "1" * 5000 + "\n", "too large"),
    # too deep for the YAML reader under Python's default recursion limit; a raised limit reads it as a list
    ("training: " + "[" * 3000 + "]" * 3000 + "\n", "too deep|expected a mapping"),
    ("x" * 1000 + ": 1\n", "unknown config section"),
    ("training:\n  " + "k" * 1000 + ": 1\n", "unknown config key"),
])
def test_huge_numbers_deep_nesting_and_long_keys_are_one_short_line(tmp_path, capsys, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(expected, err) and len(err) < 400, err[:1000]


def test_long_and_huge_override_values_are_one_short_line(capsys):
    for arg in ["--training.epochs=" + "1" * 5000, "--training.epochs=" + "[" * 3000 + "]" * 3000,
                "--" + "x" * 10000 + ".y=1", "x" * 10000]:
        assert main(["config", "--general.progress", "false", arg]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and len(err) < 400, err[:1000]


@pytest.mark.parametrize("argv", [["run", "x" * 300], ["verify", "--checkpoint", "y" * 300],
                                  ["vnncomp", "results", "z" * 300]])
def test_a_path_the_system_refuses_is_one_short_line(capsys, argv):
    assert main(argv) == 2  # ENAMETOOLONG is an OSError, not a UserError
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "too long" in err and len(err) < 300, err[:1000]
