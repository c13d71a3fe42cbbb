"""Tests of the procedural data set, the registry and ImageDataset (subset, batches)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from abcrown_plugins.data import (
    DATASETS,
    DataInfo,
    DatasetSource,
    ImageDataset,
    dataset_info,
    load_dataset,
    register_dataset,
)
from abcrown_plugins.data.synthetic import (
    ATTRIBUTES,
    CHUNK,
    DEFAULT_SIZES,
    SHAPES,
    generate_synthetic,
    render,
    sample_params,
)
from abcrown_plugins.errors import UserError


@pytest.fixture(scope="module")
def train() -> ImageDataset:
    return load_dataset("synthetic", "train", num=2000, seed=0)


@pytest.fixture(scope="module")
def gray() -> ImageDataset:
    return load_dataset("synthetic_gray", "train", num=2000, seed=0)


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_same_bytes(train: ImageDataset) -> None:
    again = load_dataset("synthetic", "train", num=2000, seed=0)
    assert torch.equal(train.images, again.images)
    assert torch.equal(train.labels, again.labels)
    assert all(torch.equal(train.attributes[k], again.attributes[k]) for k in ATTRIBUTES)


def test_different_seed_gives_different_images(train: ImageDataset) -> None:
    other = load_dataset("synthetic", "train", num=2000, seed=1)
    assert not torch.equal(train.images, other.images)
    assert not torch.equal(train.labels, other.labels)


def test_train_and_test_streams_are_disjoint(train: ImageDataset) -> None:
    test = load_dataset("synthetic", "test", num=1000, seed=0)
    assert not torch.equal(train.labels[:1000], test.labels)
    train_images = {bytes(image.numpy().tobytes()) for image in train.images}
    assert not any(bytes(image.numpy().tobytes()) in train_images for image in test.images)


def test_first_images_do_not_depend_on_num() -> None:
    small = load_dataset("synthetic", "test", num=CHUNK + 300, seed=3)
    large = load_dataset("synthetic", "test", num=2 * CHUNK + 10, seed=3)
    assert torch.equal(small.images, large.images[: CHUNK + 300])
    assert torch.equal(small.attributes["size"], large.attributes["size"][: CHUNK + 300])


def test_default_sizes() -> None:
    assert DEFAULT_SIZES == {"train": 6000, "test": 1000}
    assert len(load_dataset("synthetic_gray", "test")) == DEFAULT_SIZES["test"]


def test_labels_are_pinned() -> None:
    """The data set's identity: a change here changes every result trained on it."""
    _, labels, attributes = generate_synthetic(12, seed=0, split="train")
    assert labels.tolist() == PINNED_LABELS
    assert attributes["fg_color"].tolist() == PINNED_FG_COLOR


PINNED_LABELS = [5, 1, 6, 6, 5, 1, 2, 0, 8, 8, 9, 3]
PINNED_FG_COLOR = [1, 2, 0, 2, 1, 0, 3, 0, 1, 0, 1, 0]


# --------------------------------------------------------- shapes, types, ranges


@pytest.mark.parametrize(("name", "channels", "size"), [("synthetic", 3, 32), ("synthetic_gray", 1, 28)])
def test_shapes_dtypes_and_ranges(name: str, channels: int, size: int) -> None:
    data = load_dataset(name, "test", num=300)
    assert data.info == dataset_info(name)
    assert data.info.shape == (channels, size, size)
    assert data.images.dtype == torch.uint8 and data.images.shape == (300, channels, size, size)
    assert data.labels.dtype == torch.int64 and data.labels.shape == (300,)
    assert 0 <= int(data.labels.min()) and int(data.labels.max()) < data.info.num_classes
    assert data.info.class_names == SHAPES and len(set(SHAPES)) == 10
    assert int(data.images.min()) < 30 and int(data.images.max()) > 225  # uses the whole range
    x, y = data[7]
    assert x.dtype == torch.float32 and x.shape == (channels, size, size)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert isinstance(y, int) and y == int(data.labels[7])
    assert torch.equal((x * 255).round().to(torch.uint8), data.images[7])


def test_gray_variant_is_the_luminance_of_the_rgb_render() -> None:
    params = sample_params(np.random.default_rng(0), 40)
    params = dataclasses.replace(params, noise_std=torch.zeros(40))
    rgb = render(params, 28, 3).float() / 255
    gray = render(params, 28, 1).float() / 255
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert (gray - luma).abs().max() <= 1.5 / 255


@pytest.mark.parametrize("name", ["synthetic", "synthetic_gray"])
def test_mean_and_std_match_the_generator(name: str) -> None:
    data = load_dataset(name, "train", num=3000, seed=5)
    pixels = data.images.float().div(255).transpose(0, 1).reshape(data.info.channels, -1)
    assert torch.allclose(pixels.mean(1), torch.tensor(data.info.mean), atol=0.01)
    assert torch.allclose(pixels.std(1), torch.tensor(data.info.std), atol=0.01)


# ---------------------------------------------------------- balance, attributes


def test_labels_are_balanced(train: ImageDataset) -> None:
    assert torch.bincount(train.labels, minlength=10).tolist() == [200] * 10


def test_attributes_present_balanced_and_independent_of_shape(train: ImageDataset) -> None:
    assert set(train.attributes) == set(ATTRIBUTES)
    assert torch.equal(train.attributes["shape"], train.labels)
    for key, values in ATTRIBUTES.items():
        attribute = train.attributes[key]
        assert attribute.dtype == torch.int64
        counts = torch.bincount(attribute, minlength=len(values))
        assert counts.tolist() == [len(train) // len(values)] * len(values), key
        if key != "shape":  # drawn independently of the shape: every pair occurs
            joint = torch.bincount(train.labels * len(values) + attribute, minlength=10 * len(values))
            expected = len(train) / (10 * len(values))
            assert int(joint.min()) > 0.5 * expected and int(joint.max()) < 1.6 * expected, key


def _corners(images: torch.Tensor) -> torch.Tensor:
    """The 4 x 4 corner patches of ``images`` (N x C x H x W), pooled: N x C x 64."""
    patches = [images[..., :4, :4], images[..., :4, -4:], images[..., -4:, :4], images[..., -4:, -4:]]
    return torch.cat([p.flatten(2) for p in patches], dim=2)


def _foreground(images: torch.Tensor) -> torch.Tensor:
    """Boolean N x H x W: pixels far from the median corner colour."""
    background = _corners(images).median(dim=2).values[..., None, None]
    return (images - background).abs().amax(dim=1) > 0.3


@pytest.mark.parametrize("name", ["synthetic", "synthetic_gray"])
def test_attributes_are_visible_in_the_pixels(name: str) -> None:
    data = load_dataset(name, "train", num=1000, seed=2)
    images = data.images.float() / 255
    attrs = data.attributes

    luminance = _corners(images).mean(dim=(1, 2))
    assert ((luminance < 0.5).long() == attrs["bg_dark"]).float().mean() > 0.99

    roughness = _corners(images).diff(dim=2).abs().mean(dim=(1, 2))
    assert ((roughness > roughness.median()).long() == attrs["noise_level"]).float().mean() > 0.9

    mask = _foreground(images)
    columns = torch.arange(images.shape[-1], dtype=torch.float32)
    centroid = (mask.float().sum(1) * columns).sum(1) / mask.float().sum((1, 2)).clamp_min(1)
    right = (centroid > (images.shape[-1] - 1) / 2).long()
    assert (right == attrs["position"]).float().mean() > 0.95

    area = mask.float().mean((1, 2))
    for shape in range(10):
        rows = data.labels == shape
        large, small = rows & (attrs["size"] == 1), rows & (attrs["size"] == 0)
        assert area[large].mean() > 1.4 * area[small].mean(), SHAPES[shape]

    # Mean foreground colour per (fg_color, bg_dark) group is far from the other colours'.
    fg = (images * mask[:, None]).sum((2, 3)) / mask[:, None].float().sum((2, 3)).clamp_min(1)
    for dark in (0, 1):
        means = torch.stack([fg[(attrs["fg_color"] == c) & (attrs["bg_dark"] == dark)].mean(0) for c in range(4)])
        gaps = torch.cdist(means, means) + torch.eye(4)
        assert float(gaps.min()) > 0.05, f"{name} bg_dark={dark}"


# ----------------------------------------------------------------------- subset


def test_subset_is_stratified_nested_and_seeded(train: ImageDataset) -> None:
    small, large = train.subset(100, seed=4), train.subset(300, seed=4)
    assert len(small) == 100 and len(large) == 300
    assert torch.bincount(small.labels, minlength=10).tolist() == [10] * 10
    assert torch.bincount(large.labels, minlength=10).tolist() == [30] * 10
    small_rows = {image.numpy().tobytes() for image in small.images}
    large_rows = {image.numpy().tobytes() for image in large.images}
    assert small_rows <= large_rows and len(small_rows) == 100
    assert torch.equal(small.attributes["shape"], small.labels)
    assert torch.equal(train.subset(100, seed=4).images, small.images)
    assert not torch.equal(train.subset(100, seed=5).images, small.images)
    assert train.subset(None) is train and train.subset(len(train)) is train
    with pytest.raises(UserError):
        train.subset(0)


def test_subset_keeps_class_proportions_of_an_imbalanced_set(train: ImageDataset) -> None:
    keep = (train.labels < 2) | (torch.arange(len(train)) % 4 == 0)  # classes 0, 1 four times as frequent
    imbalanced = train.select(torch.nonzero(keep).squeeze(1))
    counts = torch.bincount(imbalanced.subset(200, seed=0).labels, minlength=10).float()
    shares = torch.bincount(imbalanced.labels, minlength=10).float() / len(imbalanced)
    assert (counts - 200 * shares).abs().max() <= 1.0


# ---------------------------------------------------------------------- batches


def _positions(data: ImageDataset, x: torch.Tensor) -> list[int]:
    """Index in ``data`` of each image of the float batch ``x``."""
    lookup = {image.numpy().tobytes(): i for i, image in enumerate(data.images)}
    return [lookup[image.numpy().tobytes()] for image in (x * 255).round().to(torch.uint8)]


def test_shuffled_batches_cover_every_sample_once_and_are_seeded(train: ImageDataset) -> None:
    data = train.subset(530)
    batches = list(data.batches(64, shuffle=True, seed=11))
    assert len(batches) == data.num_batches(64) == 9
    assert [len(y) for _, y in batches] == [64] * 8 + [18]
    order = [i for x, _ in batches for i in _positions(data, x)]
    assert sorted(order) == list(range(530)) and order != list(range(530))
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert torch.equal(y, data.labels[_positions(data, x)])
    again = [i for x, _ in data.batches(64, shuffle=True, seed=11) for i in _positions(data, x)]
    other = [i for x, _ in data.batches(64, shuffle=True, seed=12) for i in _positions(data, x)]
    assert again == order and other != order


def test_unshuffled_batches_keep_the_order(train: ImageDataset) -> None:
    data = train.subset(100)
    xs, ys = zip(*data.batches(32, device="cpu"))
    assert torch.equal(torch.cat(ys), data.labels)
    assert torch.equal((torch.cat(xs) * 255).round().to(torch.uint8), data.images)
    with pytest.raises(UserError):
        next(data.batches(0))


# --------------------------------------------------------------------- registry


def test_registry_names_and_errors() -> None:
    expected = {"synthetic", "synthetic_gray", "cifar10", "svhn", "mnist", "fashion_mnist"}
    assert expected <= set(DATASETS)
    with pytest.raises(UserError) as error:
        load_dataset("cifar", "train")
    message = str(error.value)
    assert "\n" not in message and "'cifar10'" in message
    assert all(name in message for name in expected)
    with pytest.raises(UserError, match="did you mean 'synthetic'"):
        dataset_info("synthetc")
    with pytest.raises(UserError, match="'train' or 'test'"):
        load_dataset("synthetic", "val")
    with pytest.raises(UserError, match="positive"):
        load_dataset("synthetic", "test", num=0)


def test_register_dataset_refuses_duplicates() -> None:
    class Dummy(DatasetSource):
        info = DataInfo("synthetic", 10, 1, 28, (0.5,), (0.5,), tuple("abcdefghij"))

        @classmethod
        def load(cls, split: str, root: str | None, num: int | None, seed: int) -> ImageDataset:
            raise AssertionError

    before = DATASETS["synthetic"]
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("synthetic")(Dummy)
    assert DATASETS["synthetic"] is before
    with pytest.raises(ValueError, match="info.name"):
        register_dataset("dummy_name_mismatch")(Dummy)
    assert "dummy_name_mismatch" not in DATASETS
