"""vnnlib:DIR: a benchmark's properties as a test split, and exports that copy them box for box."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from abcrown_plugins.data import dataset_info, load_dataset
from abcrown_plugins.data.vnnlib_source import image_shape
from abcrown_plugins.errors import UserError
from abcrown_plugins.export import export_benchmark, generate_properties, read_robustness_vnnlib


def rows(folder):
    return list(csv.reader((folder / "instances.csv").read_text().splitlines()))


def properties(folder):
    """``{file name: property}`` of every instance of a benchmark folder, in instances.csv order."""
    return [read_robustness_vnnlib(folder / v) for _, v, _ in rows(folder)]


@pytest.fixture(scope="module")
def original(small_checkpoint, tmp_path_factory):
    """A benchmark drawn by the project's exporter (VNN-LIB 1.0)."""
    out = tmp_path_factory.mktemp("orig") / "bench"
    export_benchmark(small_checkpoint, out, 5, 2 / 255, 1, timeout=30)
    return out


@pytest.fixture(scope="module")
def copied(small_checkpoint, original, tmp_path_factory):
    """The same properties exported again for the same network (as for a pruned one): 1.0 and 2.0."""
    outs = {}
    for version in (1, 2):
        out = tmp_path_factory.mktemp(f"copy{version}") / "bench"
        summary = export_benchmark(small_checkpoint, out, None, None, 9, timeout=30, dataset=f"vnnlib:{original}",
                                   vnnlib_version=version)
        assert summary["source"] == "vnnlib" and summary["instances"] == 5 and summary["eps"] is None
        outs[version] = out
    return outs


def test_a_benchmark_is_a_test_split_with_its_exact_boxes(original):
    name = f"vnnlib:{original}"
    data = load_dataset(name, "test")
    props = properties(original)
    info = dataset_info(name)
    assert data.info == info and info.shape == (3, 32, 32) and info.num_classes == props[0].num_classes
    assert info.mean == (0.0, 0.0, 0.0) and info.std == (1.0, 1.0, 1.0)
    assert len(data) == 5 and data.boxes is not None and not data.is_bytes
    assert list(data.boxes.sources) == [v for _, v, _ in rows(original)]
    for i, prop in enumerate(props):
        assert data.labels[i] == prop.label
        assert torch.equal(data.boxes.lower[i].flatten(), torch.from_numpy(prop.lower))  # float64, exactly
        assert torch.equal(data.boxes.upper[i].flatten(), torch.from_numpy(prop.upper))
        centre = ((data.boxes.lower[i] + data.boxes.upper[i]) / 2).float()
        assert torch.equal(data.pixels(i), centre)
    # the drawn images were whole grey levels: the centre is the image unless the box was clipped
    drawn = load_dataset("synthetic", "test")
    for i, (_, vnn, _) in enumerate(rows(original)):
        idx = int(vnn.split("_idx")[1].split("_")[0])
        unclipped = ((data.boxes.lower[i] > 0) & (data.boxes.upper[i] < 1))
        assert torch.allclose(data.pixels(i)[unclipped], drawn.pixels(idx)[unclipped], atol=1e-6)


def test_num_and_seed_subset_keeps_boxes_with_their_examples(original):
    name = f"vnnlib:{original}"
    full = load_dataset(name, "test")
    sub = load_dataset(name, "test", num=3, seed=2)
    assert len(sub) == 3 and len(sub.boxes.sources) == 3
    for i, source in enumerate(sub.boxes.sources):
        j = full.boxes.sources.index(source)
        assert torch.equal(sub.boxes.lower[i], full.boxes.lower[j]) and sub.labels[i] == full.labels[j]


def test_a_benchmark_has_no_training_split(original):
    with pytest.raises(UserError, match="no training split"):
        load_dataset(f"vnnlib:{original}", "train")


@pytest.mark.parametrize("version", [1, 2])
def test_an_export_from_a_benchmark_states_the_same_properties(original, copied, version):
    out = copied[version]
    ours, theirs = properties(out), properties(original)
    assert len(ours) == len(theirs) == 5
    for a, b in zip(ours, theirs):
        assert a.version == version and a.label == b.label and a.num_classes == b.num_classes
        np.testing.assert_array_equal(a.lower, b.lower)
        np.testing.assert_array_equal(a.upper, b.upper)
    # the original's order and names; each file and benchmark.json say where they come from
    assert [v for _, v, _ in rows(out)] == [v for _, v, _ in rows(original)]
    settings = json.loads((out / "benchmark.json").read_text())
    assert settings["source"] == "vnnlib" and settings["vnnlib_version"] == version
    assert settings["copied_from"]["folder"] == str(original.resolve())
    first = (out / rows(out)[0][1]).read_text()
    assert f"; property copied from {original.resolve()}/{rows(original)[0][1]}" in first
    assert ("(vnnlib-version <2.0>)" in first) == (version == 2)
    assert not (out / "data" / "test_images.npy").exists()


def test_the_copy_is_itself_a_vnnlib_data_set_with_the_same_boxes(original, copied):
    a, b = load_dataset(f"vnnlib:{original}", "test"), load_dataset(f"vnnlib:{copied[2]}", "test")
    assert torch.equal(a.boxes.lower, b.boxes.lower) and torch.equal(a.boxes.upper, b.boxes.upper)
    assert torch.equal(a.labels, b.labels) and a.info.shape == b.info.shape  # 2.0: the shape is declared


def test_the_copied_folder_regenerates_standalone(copied, tmp_path):
    out = copied[1]
    before = {v: (out / v).read_text() for _, v, _ in rows(out)}
    r = subprocess.run([sys.executable, "generate_properties.py", "4"], cwd=out, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert {v: (out / v).read_text() for _, v, _ in rows(out)} == before  # all of them: the seed changes nothing
    settings_path = out / "benchmark.json"
    settings = json.loads(settings_path.read_text())
    settings_path.write_text(json.dumps({**settings, "n": 2}))
    try:
        picked = {seed: generate_properties(out, seed) for seed in range(6)}
        assert all(len(p) == 2 and p == sorted(p) for p in picked.values())
        assert len({tuple(p) for p in picked.values()}) > 1  # the seed picks which
        names = list(before)  # the original order
        assert [v for _, v, _ in rows(out)] == [names[i] for i in picked[5]]  # the last redraw, kept in order
    finally:
        settings_path.write_text(json.dumps(settings))
        generate_properties(out, 0)


def test_eps_and_n_fit_the_mode(small_checkpoint, original, tmp_path):
    with pytest.raises(UserError, match="--eps does not apply"):
        export_benchmark(small_checkpoint, tmp_path / "a", None, 2 / 255, 0, dataset=f"vnnlib:{original}")
    with pytest.raises(UserError, match="exceeds the 5 properties"):
        export_benchmark(small_checkpoint, tmp_path / "b", 6, None, 0, dataset=f"vnnlib:{original}")
    with pytest.raises(UserError, match="--n and --eps are required"):
        export_benchmark(small_checkpoint, tmp_path / "c", None, 2 / 255, 0)
    assert not any(tmp_path.iterdir())


def test_a_box_of_another_size_is_refused_naming_its_file(original, tmp_path):
    bench = tmp_path / "bench"
    (bench / "vnnlib").mkdir(parents=True)
    (bench / "onnx").mkdir()
    first = rows(original)[0]
    (bench / "onnx" / "net.onnx").write_bytes((original / first[0]).read_bytes())
    (bench / first[1]).write_bytes((original / first[1]).read_bytes())
    small = ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
             "(assert (<= X_0 1.0))\n(assert (>= X_0 0.0))\n(assert (>= Y_1 Y_0))\n")
    (bench / "vnnlib" / "small.vnnlib").write_text(small)
    (bench / "instances.csv").write_text(f"onnx/net.onnx,{first[1]},30\nonnx/net.onnx,vnnlib/small.vnnlib,30\n")
    with pytest.raises(UserError) as e:
        load_dataset(f"vnnlib:{bench}", "test")
    message = str(e.value)
    assert "small.vnnlib" in message and "1 values" in message and "3072" in message and "\n" not in message


@pytest.mark.parametrize("make,words", [
    (lambda d: None, "no instances.csv"),
    (lambda d: (d / "instances.csv").write_text("\n"), "names no instances"),
    (lambda d: (d / "instances.csv").write_text("onnx/x.onnx\n"), "expected 'onnx,vnnlib,timeout'"),
    (lambda d: (d / "instances.csv").write_text("onnx/x.onnx,vnnlib/p.vnnlib,30\n"), "not found"),
])
def test_bad_benchmark_folders_are_one_line(tmp_path, make, words):
    make(tmp_path)
    with pytest.raises(UserError) as e:
        load_dataset(f"vnnlib:{tmp_path}", "test")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_input_shapes_become_square_images():
    assert image_shape((1, 3, 32, 32), "x") == (3, 32, 32)
    assert image_shape((1, 784), "x") == (1, 28, 28)
    assert image_shape((3072,), "x") == (3, 32, 32)
    assert image_shape((1, 1, 1, 28, 28), "x") == (1, 28, 28)
    for bad in [(1, 32, 32, 3), (1, 5), (1, 3, 4, 5)]:
        with pytest.raises(UserError, match="image"):
            image_shape(bad, "net.onnx")
