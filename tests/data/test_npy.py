"""npy:DIR: the four layouts load to identical tensors; every bad file is one UserError that names it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abcrown_plugins.config import build_config
from abcrown_plugins.config.kinds import KindError
from abcrown_plugins.data import DataInfo, ImageDataset, dataset_info, load_dataset, run_info, with_normalisation
from abcrown_plugins.errors import UserError

N, C, S, K = 24, 3, 6, 4


def pixels(seed: int = 0, n: int = N, c: int = C, s: int = S) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, s, s), dtype=np.uint8)


def labels(n: int = N, k: int = K) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % k


def folder(tmp_path, name: str, x: np.ndarray, y: np.ndarray, train: tuple | None = None):
    d = tmp_path / name
    d.mkdir(parents=True)
    np.save(d / "X.npy", x)
    np.save(d / "y.npy", y)
    if train is not None:
        (d / "train").mkdir()
        np.save(d / "train" / "X.npy", train[0])
        np.save(d / "train" / "y.npy", train[1])
    return d


def one_line_error(name: str, split: str = "test") -> str:
    with pytest.raises(UserError) as e:
        load_dataset(name, split)
    message = str(e.value)
    assert "\n" not in message and message, message
    return message


@pytest.mark.parametrize("channels", [1, 3])
def test_four_layouts_load_to_identical_tensors(tmp_path, channels):
    u8 = pixels(c=channels)
    layouts = {
        "nchw_uint8": u8,
        "nhwc_uint8": u8.transpose(0, 2, 3, 1),
        "nchw_float32": u8.astype(np.float32) / np.float32(255),
        "nhwc_float64": (u8.astype(np.float64) / 255).transpose(0, 2, 3, 1),
    }
    loaded = {k: load_dataset(f"npy:{folder(tmp_path, k, x, labels())}", "test") for k, x in layouts.items()}
    ref = loaded["nchw_uint8"]
    assert ref.is_bytes and torch.equal(ref.images, torch.from_numpy(u8))
    for key, data in loaded.items():
        assert data.is_bytes, key  # whole grey levels are stored as bytes whatever the file held
        assert torch.equal(data.storage(), ref.storage()) and torch.equal(data.labels, ref.labels), key
        assert (data.info.channels, data.info.size, data.info.num_classes) == (channels, S, K)
        assert data.info.mean == (0.0,) * channels and data.info.std == (1.0,) * channels
        assert data.info.class_names == ("0", "1", "2", "3")
    x, y = next(ref.batches(N))
    assert torch.equal(x, torch.from_numpy(u8).float() / 255) and torch.equal(y, torch.from_numpy(labels()))


def test_floats_off_the_grey_grid_are_kept_exactly(tmp_path):
    x = np.random.default_rng(1).random((N, C, S, S), dtype=np.float32)
    data = load_dataset(f"npy:{folder(tmp_path, 'f', x.transpose(0, 2, 3, 1), labels())}", "test")
    assert not data.is_bytes and torch.equal(data.pixels(), torch.from_numpy(x))
    batch, _ = next(data.batches(5))
    assert torch.equal(batch, torch.from_numpy(x[:5]))
    batch.zero_()  # a caller changing its batch in place never changes the data set
    assert torch.equal(data.pixels(slice(0, 5)), torch.from_numpy(x[:5]))
    image, label = data[3]
    assert torch.equal(image, torch.from_numpy(x[3])) and label == 3
    with pytest.raises(UserError, match="float pixels"):  # a uint8-only consumer is told, not fed x/255
        data.images  # noqa: B018


def test_train_split_and_info_from_both_splits(tmp_path):
    train_y = np.array([0, 1, 2, 3, 4, 5] * 3, dtype=np.int64)  # class 5 only in the training split
    d = folder(tmp_path, "t", pixels(), labels(), train=(pixels(2, n=18).transpose(0, 2, 3, 1), train_y))
    info = dataset_info(f"npy:{d}")
    assert info.num_classes == 6 and info.shape == (C, S, S)
    train = load_dataset(f"npy:{d}", "train")
    assert torch.equal(train.images, torch.from_numpy(pixels(2, n=18))) and train.info == info
    assert load_dataset(f"npy:{d}", "test").info == info


def test_training_without_a_training_split_is_one_clear_error(tmp_path):
    d = folder(tmp_path, "only_test", pixels(), labels())
    message = one_line_error(f"npy:{d}", "train")
    assert str(d / "train" / "X.npy") in message and "missing" in message and "no training split" in message


def test_num_and_seed_take_a_class_stratified_subset(tmp_path):
    name = f"npy:{folder(tmp_path, 's', pixels(), labels())}"
    full = load_dataset(name, "test")
    sub = load_dataset(name, "test", num=8, seed=3)
    assert len(sub) == 8 and torch.bincount(sub.labels, minlength=K).tolist() == [2, 2, 2, 2]
    assert torch.equal(sub.images, full.subset(8, seed=3).images)
    assert not torch.equal(sub.images, load_dataset(name, "test", num=8, seed=4).images)


def save_raw(path, data: bytes):
    path.write_bytes(data)


BAD = {
    # name: (how to spoil a good folder, words the message must hold)
    "x_missing": (lambda d: (d / "X.npy").unlink(), ["X.npy", "missing"]),
    "y_missing": (lambda d: (d / "y.npy").unlink(), ["y.npy", "missing"]),
    "x_pickled": (lambda d: np.save(d / "X.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True),
                  ["X.npy", "Python objects", "never unpickled"]),
    "x_garbage": (lambda d: save_raw(d / "X.npy", b"not an array at all"), ["X.npy", "not a .npy file"]),
    "x_truncated": (lambda d: save_raw(d / "X.npy", (d / "X.npy").read_bytes()[:200]), ["X.npy", "cannot read"]),
    "x_not_square": (lambda d: np.save(d / "X.npy", np.zeros((N, 3, 5, 6), np.uint8)), ["X.npy", "square"]),
    "x_bad_shape": (lambda d: np.save(d / "X.npy", np.zeros((N, 5, 6, 7), np.uint8)), ["X.npy", "N x C x H x W"]),
    "x_3d": (lambda d: np.save(d / "X.npy", np.zeros((N, 6, 6), np.uint8)), ["X.npy", "N x C x H x W"]),
    "x_empty": (lambda d: np.save(d / "X.npy", np.zeros((0, 3, 6, 6), np.uint8)), ["X.npy", "no images"]),
    "x_float_255": (lambda d: np.save(d / "X.npy", pixels().astype(np.float32)), ["X.npy", "[0, 1]", "divide by 255"]),
    "x_negative_float": (lambda d: np.save(d / "X.npy", np.full((N, 3, 6, 6), -0.5, np.float32)), ["X.npy", "[0, 1]"]),
    "x_nan": (lambda d: np.save(d / "X.npy", np.full((N, 3, 6, 6), np.nan, np.float32)), ["X.npy", "NaN"]),
    "x_big_int": (lambda d: np.save(d / "X.npy", np.full((N, 3, 6, 6), 300, np.int32)), ["X.npy", "0..255"]),
    "x_strings": (lambda d: np.save(d / "X.npy", np.full((N, 3, 6, 6), "a")), ["X.npy", "expected uint8"]),
    "y_one_hot": (lambda d: np.save(d / "y.npy", np.eye(K)[labels()]), ["y.npy", "one label per image"]),
    "y_short": (lambda d: np.save(d / "y.npy", labels()[:-1]), ["y.npy", f"{N - 1} labels", f"{N} images"]),
    "y_fraction": (lambda d: np.save(d / "y.npy", labels() + 0.5), ["y.npy", "integer class indices"]),
    "y_negative": (lambda d: np.save(d / "y.npy", labels() - 1), ["y.npy", "negative label"]),
    "y_one_class": (lambda d: np.save(d / "y.npy", np.zeros(N, np.int64)), ["y.npy", "two classes"]),
    "train_other_shape": (lambda d: (d.joinpath("train").mkdir(), np.save(d / "train" / "X.npy", pixels(s=8)),
                                     np.save(d / "train" / "y.npy", labels())), ["train", "same image shape"]),
    "train_y_missing": (lambda d: (d.joinpath("train").mkdir(), np.save(d / "train" / "X.npy", pixels())),
                        ["train", "y.npy", "missing"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_every_bad_file_is_one_user_error_naming_it(tmp_path, case):
    d = folder(tmp_path, case, pixels(), labels())
    spoil, words = BAD[case]
    spoil(d)
    message = one_line_error(f"npy:{d}")
    for word in words:
        assert word in message, (word, message)
    assert str(d) in message


def test_names_without_a_folder_or_scheme_are_refused_with_the_valid_forms(tmp_path):
    assert "no folder" in one_line_error("npy:")
    assert "not found" in one_line_error(f"npy:{tmp_path / 'absent'}")
    message = one_line_error("npz:somewhere")
    assert "npy:DIR" in message and "vnnlib:DIR" in message and "cifar10" in message


def test_run_info_applies_data_mean_and_std(tmp_path):
    name = f"npy:{folder(tmp_path, 'm', pixels(), labels())}"
    cfg = build_config({"data": {"dataset": name}})
    assert cfg.data.mean is None and cfg.data.std is None and run_info(cfg) == dataset_info(name)
    cfg = build_config({"data": {"dataset": name, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}})
    info = run_info(cfg)
    assert info.mean == (0.5, 0.4, 0.3) and info.std == (0.2, 0.25, 0.3) and info.shape == (C, S, S)
    data = load_dataset(name, "test").with_info(info)
    assert data.info is info and len(data) == N
    synthetic = run_info(build_config({"data": {"std": [0.5, 0.5, 0.5]}}))  # mean stays the data set's own
    assert synthetic.mean == dataset_info("synthetic").mean and synthetic.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("mean,std,words", [
    ([0.5, 0.5], None, ["data.mean", "2 entries", "3 channel"]),
    (None, [0.2, 0.0, 0.2], ["data.std", "positive"]),
    (None, [1.0], ["data.std", "1 entries"]),
])
def test_bad_normalisation_is_one_line(tmp_path, mean, std, words):
    cfg = build_config({"data": {"dataset": f"npy:{folder(tmp_path, 'b', pixels(), labels())}", "mean": mean,
                                 "std": std}})
    with pytest.raises(UserError) as e:
        run_info(cfg)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


def test_normalisation_keys_are_typed_lists():
    with pytest.raises((UserError, KindError, ValueError), match="data.mean"):
        build_config({"data": {"mean": "0.5"}})
    with pytest.raises((UserError, KindError, ValueError), match="data.std"):
        build_config({"data": {"std": [-1.0]}})
    info = DataInfo("x", 2, 1, 4, (0.0,), (1.0,), ("a", "b"))
    assert with_normalisation(info, None, None) is info


def test_float_datasets_keep_boxes_and_pixels_through_select():
    info = DataInfo("f", 2, 1, 2, (0.0,), (1.0,), ("a", "b"))
    x = torch.rand(4, 1, 2, 2)
    data = ImageDataset(x, torch.tensor([0, 1, 0, 1]), info)
    part = data.select(torch.tensor([3, 1]))
    assert torch.equal(part.pixels(), x[[3, 1]]) and part.labels.tolist() == [1, 1]
    with pytest.raises(ValueError, match="finite"):
        ImageDataset(torch.full((1, 1, 2, 2), float("nan")), torch.tensor([0]), info)
