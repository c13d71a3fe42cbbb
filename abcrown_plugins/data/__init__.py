"""Data sets: one in-memory :class:`ImageDataset` per split, found by name in a registry.

``load_dataset("synthetic", "train")`` generates the embedded procedural data set;
``cifar10``, ``svhn``, ``mnist`` and ``fashion_mnist`` are read from the standard
files under ``root`` (see :mod:`abcrown_plugins.data.readers` for the layouts).
"""

from abcrown_plugins.data import readers as _readers  # noqa: F401  (registers the file readers)
from abcrown_plugins.data import synthetic as _synthetic  # noqa: F401  (registers the procedural sets)
from abcrown_plugins.data.base import DataInfo, ImageDataset
from abcrown_plugins.data.registry import (
    DATASETS,
    SPLITS,
    DatasetSource,
    dataset_info,
    load_dataset,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "DataInfo",
    "DatasetSource",
    "ImageDataset",
    "dataset_info",
    "load_dataset",
    "register_dataset",
]
