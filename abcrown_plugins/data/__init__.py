"""Data sets: one in-memory :class:`ImageDataset` per split, found by name in a registry.

``load_dataset("synthetic", "train")`` generates the embedded procedural data set;
``cifar10``, ``svhn``, ``mnist`` and ``fashion_mnist`` are read from the standard
files under ``root`` (see :mod:`abcrown_plugins.data.readers` for the layouts).
The user's own data has parametrised names: ``npy:DIR`` (numpy arrays,
:mod:`abcrown_plugins.data.npy`) and ``vnnlib:DIR`` (the properties of a VNN-COMP
benchmark, :mod:`abcrown_plugins.data.vnnlib_source`). :func:`run_info` is the
:class:`DataInfo` a run builds its model for (``data.mean``/``data.std`` applied).
"""

from abcrown_plugins.data import npy as _npy  # noqa: F401  (registers npy:DIR)
from abcrown_plugins.data import readers as _readers  # noqa: F401  (registers the file readers)
from abcrown_plugins.data import synthetic as _synthetic  # noqa: F401  (registers the procedural sets)
from abcrown_plugins.data import vnnlib_source as _vnnlib_source  # noqa: F401  (registers vnnlib:DIR)
from abcrown_plugins.data.base import DataInfo, ImageDataset, InputBoxes
from abcrown_plugins.data.registry import (
    DATASET_SCHEMES,
    DATASETS,
    SPLITS,
    DatasetSource,
    dataset_info,
    load_dataset,
    register_dataset,
    register_dataset_scheme,
    run_info,
    with_normalisation,
)

__all__ = [
    "DATASETS",
    "DATASET_SCHEMES",
    "SPLITS",
    "DataInfo",
    "DatasetSource",
    "ImageDataset",
    "InputBoxes",
    "dataset_info",
    "load_dataset",
    "register_dataset",
    "register_dataset_scheme",
    "run_info",
    "with_normalisation",
]
