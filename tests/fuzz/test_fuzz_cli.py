"""Random command lines: every sub-command with random flags and values ends in exit code 0 or one error line.

The vocabulary holds the real commands and flags, hostile values (NaN, huge numbers,
negative radii, long text) and files that exist but are not what a flag wants (random
bytes, an empty or broken YAML, a folder, a file where a folder goes). No valid
checkpoint or config is offered, so no example starts a long computation.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .helpers import FUZZ, assert_clean_exit, assert_nothing_half_written, inside, run_cli

COMMANDS = [["run"], ["train"], ["verify"], ["config"], ["models"], ["export"], ["certify"], ["transfer"],
            ["methods"], ["vnncomp", "run"], ["vnncomp", "run-instance"], ["vnncomp", "results"], ["vnncomp"],
            ["sweep"], []]
FLAGS = ["--checkpoint", "--config", "--output", "--out", "--n", "--eps", "--seed", "--timeout", "--force", "--dump",
         "--all", "--executor", "--workers", "--ray-address", "--data-root", "--abcrown-config", "--limit",
         "--timeout-scale", "--help", "--training.epochs", "--general.device", "--smoothing.n", "--data.root",
         "--verification.eps", "--pruning.method", "--nonsense", "-x"]
VALUES = ["bad.pt", "empty.yaml", "broken.yaml", "list.yaml", "folder", "afile/out", "missing.pt", "zoo:missing",
          "zoo:", "nan", "inf", "-inf", "1e400", "-1", "0", "2/255", "-1/255", "1/0", "9" * 50, "", " ", "ray",
          "local", "cuda", "--", "-", "x" * 300, "bench", "results.pkl", "☃"]


@pytest.fixture(scope="module")
def workdir(fuzz_root):
    folder = fuzz_root / "cli"
    folder.mkdir()
    (folder / "bad.pt").write_bytes(os.urandom(300))
    (folder / "empty.yaml").write_text("")
    (folder / "broken.yaml").write_text("training: [1, 2\n  epochs: {")
    (folder / "list.yaml").write_text("- 1\n- 2\n")
    (folder / "folder").mkdir()
    (folder / "afile").write_text("a file where a folder is expected")
    (folder / "bench").mkdir()
    (folder / "bench" / "instances.csv").write_text("onnx/x.onnx,vnnlib/y.vnnlib,nan\n")
    (folder / "results.pkl").write_bytes(os.urandom(64))
    return folder


ARGV = st.tuples(st.sampled_from(COMMANDS),
                 st.lists(st.sampled_from(FLAGS) | st.sampled_from(VALUES) | st.text(max_size=8), max_size=7))


@settings(FUZZ, max_examples=400)
@given(argv=ARGV)
def test_random_command_lines(workdir, argv):
    command, rest = argv
    args = [*command, *rest]
    with inside(workdir):
        code, err = run_cli(args)
    assert_clean_exit(code, err, args)
    assert_nothing_half_written(workdir)
    assert not (workdir / "results").exists() or not any((workdir / "results").iterdir()), \
        "a failed command claimed an output folder"


@settings(FUZZ, max_examples=150)
@given(command=st.sampled_from([["verify"], ["export"], ["certify"]]),
       value=st.sampled_from(VALUES) | st.text(max_size=12), flag=st.sampled_from(["--eps", "--n", "--timeout",
                                                                                   "--seed", "--checkpoint"]))
def test_each_flag_with_a_hostile_value(workdir, command, value, flag):
    base = {"verify": ["--checkpoint", "bad.pt"], "export": ["--checkpoint", "bad.pt", "--out", "bench2", "--n", "1",
                                                             "--eps", "1/255"],
            "certify": ["--checkpoint", "bad.pt"]}[command[0]]
    args = [*command, *base, flag, value]
    with inside(workdir):
        code, err = run_cli(args)
    assert_clean_exit(code, err, args)
    assert code == 2  # nothing here is a valid checkpoint
    assert not (Path(workdir) / "bench2").exists()
