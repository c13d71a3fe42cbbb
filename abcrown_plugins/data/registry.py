"""Registry of data sets: name -> :class:`DatasetSource`.

A data set registers itself with the :func:`register_dataset` decorator on a
subclass of :class:`DatasetSource`, which carries the static :class:`DataInfo`
(``dataset_info`` answers without loading anything) and a ``load`` class method.
Names are looked up in the plain dict :data:`DATASETS`, never in ``globals()``.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, TypeVar

from abcrown_plugins.data.base import DataInfo, ImageDataset
from abcrown_plugins.errors import UserError

__all__ = ["DATASETS", "SPLITS", "DatasetSource", "dataset_info", "load_dataset", "register_dataset"]

SPLITS: tuple[str, ...] = ("train", "test")


class DatasetSource(ABC):
    """A registered data set: its metadata and how to load a split of it."""

    info: ClassVar[DataInfo]

    @classmethod
    @abstractmethod
    def load(cls, split: str, root: str | None, num: int | None, seed: int) -> ImageDataset:
        """Return split ``split`` (``"train"`` or ``"test"``, already validated).

        ``num`` (``None``: all, else >= 1) caps the number of samples and ``seed``
        picks them (or, for procedural data, seeds their generation); ``root`` is
        the folder holding the files, ignored by procedural data sets.
        """


#: Every registered data set, by name.
DATASETS: dict[str, type[DatasetSource]] = {}

_S = TypeVar("_S", bound=type[DatasetSource])


def register_dataset(name: str) -> Callable[[_S], _S]:
    """Class decorator adding a :class:`DatasetSource` to :data:`DATASETS` under ``name``.

    Refuses a name that is already taken, and a source whose ``info.name``
    differs from ``name``.
    """

    def decorate(source: _S) -> _S:
        if name in DATASETS:
            raise ValueError(f"data set {name!r} is already registered by {DATASETS[name].__qualname__}")
        if source.info.name != name:
            raise ValueError(f"data set {name!r}: {source.__qualname__}.info.name is {source.info.name!r}")
        DATASETS[name] = source
        return source

    return decorate


def _source(name: str) -> type[DatasetSource]:
    if name in DATASETS:
        return DATASETS[name]
    valid = ", ".join(sorted(DATASETS))
    close = difflib.get_close_matches(str(name).lower(), list(DATASETS), n=1, cutoff=0.4)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"unknown data set {name!r}{hint}; valid names: {valid}")


def dataset_info(name: str) -> DataInfo:
    """Return the :class:`DataInfo` of data set ``name`` without loading it."""
    return _source(name).info


def load_dataset(
    name: str,
    split: str,
    root: str | None = None,
    num: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load split ``split`` (``"train"`` or ``"test"``) of data set ``name``.

    ``root`` is the folder holding the data files (each reader documents the
    layouts it accepts; ignored by procedural data sets). ``num`` caps the
    number of samples: for data read from files a class-stratified subset
    chosen by ``seed``; for procedural data the number generated, with ``seed``
    seeding the generator. Raises :class:`UserError` for an unknown name or
    split, a non-positive ``num``, and missing or corrupt files.
    """
    source = _source(name)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for data set {name!r}; use 'train' or 'test'")
    if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 1):
        raise UserError(f"number of samples for data set {name!r} must be a positive integer or None, got {num!r}")
    return source.load(split, root, num, seed)
