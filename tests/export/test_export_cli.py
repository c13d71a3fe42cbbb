"""Through the CLI: export --vnnlib-version 2, --dataset npy:DIR and vnnlib:DIR; bad data is one line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from abcrown_plugins.cli import main
from abcrown_plugins.data import load_dataset
from abcrown_plugins.export import read_robustness_vnnlib


def rows(folder):
    return list(csv.reader((folder / "instances.csv").read_text().splitlines()))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("abcrown-plugins: error:")
    return lines[0]


def export(checkpoint, out, *extra) -> int:
    return main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--seed", "3", "--timeout", "30",
                 *extra])


@pytest.fixture(scope="module")
def v2_bench(small_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("v2") / "bench"
    assert export(small_checkpoint, out, "--n", "3", "--eps", "2/255", "--vnnlib-version", "2") == 0
    return out


def test_vnnlib_version_2_writes_vnnlib_2_files(v2_bench, capsys):
    vnnlib = pytest.importorskip("vnnlib")
    assert len(rows(v2_bench)) == 3
    assert json.loads((v2_bench / "benchmark.json").read_text())["vnnlib_version"] == 2
    for _, vnn, _ in rows(v2_bench):
        text = (v2_bench / vnn).read_text()
        assert "(vnnlib-version <2.0>)" in text and "declare-const" not in text
        query = vnnlib.parse_query_string(text)  # the official VNN-LIB 2.0 parser accepts it
        assert list(query.networks[0].inputs[0].shape) == [1, 3, 32, 32]
        prop = read_robustness_vnnlib(v2_bench / vnn)
        assert prop.version == 2 and prop.lower.size == 3 * 32 * 32


def test_default_is_vnnlib_1(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "v1"
    assert export(small_checkpoint, out, "--n", "1", "--eps", "1/255") == 0
    assert "VNN-LIB 1.0" in capsys.readouterr().out
    text = (out / rows(out)[0][1]).read_text()
    assert "(declare-const X_0 Real)" in text and "vnnlib-version" not in text


def test_a_vnnlib_dataset_copies_its_properties_without_eps(small_checkpoint, v2_bench, tmp_path, capsys):
    out = tmp_path / "copy"
    assert export(small_checkpoint, out, "--dataset", f"vnnlib:{v2_bench}") == 0
    printed = capsys.readouterr().out
    assert "properties copied from" in printed and json.loads(printed.splitlines()[-1])["source"] == "vnnlib"
    for (_, a, _), (_, b, _) in zip(rows(out), rows(v2_bench), strict=True):
        pa, pb = read_robustness_vnnlib(out / a), read_robustness_vnnlib(v2_bench / b)
        assert pa.version == 1 and pa.label == pb.label
        assert np.array_equal(pa.lower, pb.lower) and np.array_equal(pa.upper, pb.upper)


def test_an_npy_copy_of_the_test_split_exports_the_same_properties(small_checkpoint, v2_bench, tmp_path):
    test = load_dataset("synthetic", "test")
    data = tmp_path / "npy"
    data.mkdir()
    np.save(data / "X.npy", test.images.numpy().transpose(0, 2, 3, 1).astype(np.float32) / np.float32(255))  # NHWC
    np.save(data / "y.npy", test.labels.numpy())
    out = tmp_path / "from_npy"
    assert export(small_checkpoint, out, "--n", "3", "--eps", "2/255", "--vnnlib-version", "2",
                  "--dataset", f"npy:{data}") == 0
    for (_, a, _), (_, b, _) in zip(rows(out), rows(v2_bench), strict=True):
        assert a.split("_idx")[1] == b.split("_idx")[1]  # the same images drawn
        pa, pb = read_robustness_vnnlib(out / a), read_robustness_vnnlib(v2_bench / b)
        assert pa.label == pb.label and np.array_equal(pa.lower, pb.lower) and np.array_equal(pa.upper, pb.upper)


@pytest.mark.parametrize("args,words", [
    (["--n", "2", "--eps", "2/255", "--dataset", "npy:{bad}"], ["X.npy", "shape (4, 5, 6, 7)"]),
    (["--n", "2", "--eps", "2/255", "--dataset", "npy:{bad}/absent"], ["not found"]),
    (["--n", "2", "--eps", "2/255", "--dataset", "vnnlib:{bad}"], ["no instances.csv"]),
    (["--n", "2"], ["--n and --eps are required"]),
    (["--n", "2", "--eps", "2/255", "--vnnlib-version", "3"], ["invalid choice"]),
])
def test_bad_data_or_arguments_exit_2_with_one_line(small_checkpoint, tmp_path, capsys, args, words):
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "X.npy", np.zeros((4, 5, 6, 7), np.uint8))
    np.save(bad / "y.npy", np.arange(4))
    code = export(small_checkpoint, tmp_path / "out", *[a.format(bad=bad) for a in args])
    line = one_error_line(capsys)
    assert code == 2 and all(w in line for w in words), line
    assert not (tmp_path / "out").exists()
