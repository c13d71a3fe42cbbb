"""Registry of data sets: name -> :class:`DatasetSource`.

A data set registers itself with the :func:`register_dataset` decorator on a
subclass of :class:`DatasetSource`, which carries the static :class:`DataInfo`
(``dataset_info`` answers without loading anything) and a ``load`` class method.
Names are looked up in the plain dict :data:`DATASETS`, never in ``globals()``.

Data sets of the user's own files have parametrised names ``SCHEME:ARGUMENT``
(``npy:DIR``, ``vnnlib:DIR``): :func:`register_dataset_scheme` adds a factory that
builds the source of one such name (:data:`DATASET_SCHEMES`); its ``info`` is
inferred from the files.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

from abcrown_plugins.data.base import DataInfo, ImageDataset
from abcrown_plugins.errors import UserError

__all__ = ["DATASETS", "DATASET_SCHEMES", "SPLITS", "DatasetSource", "dataset_info", "load_dataset",
           "register_dataset", "register_dataset_scheme", "run_info", "with_normalisation"]

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


class DatasetScheme(NamedTuple):
    """A family of parametrised data sets ``SCHEME:ARGUMENT``.

    ``factory(name, argument)`` returns the :class:`DatasetSource` (an instance)
    of the full ``name``, its ``info.name`` equal to ``name``; it reads what it
    needs to know the :class:`DataInfo` and raises :class:`UserError` for bad files.
    ``usage`` is the form shown in errors, e.g. ``npy:DIR``.
    """

    factory: Callable[[str, str], DatasetSource]
    usage: str


#: Every registered family of parametrised data sets, by scheme (the part before the first ``:``).
DATASET_SCHEMES: dict[str, DatasetScheme] = {}


def register_dataset_scheme(scheme: str, factory: Callable[[str, str], DatasetSource], usage: str) -> None:
    """Serve every data set name ``scheme:ARGUMENT`` by ``factory(name, ARGUMENT)`` (:class:`DatasetScheme`).

    Refuses a scheme that is taken, holds a ``:``, or is a registered data set name.
    """
    if not scheme or ":" in scheme or scheme in DATASETS:
        raise ValueError(f"data set scheme {scheme!r} must be a new name without ':'")
    if scheme in DATASET_SCHEMES:
        raise ValueError(f"data set scheme {scheme!r} is already registered")
    DATASET_SCHEMES[scheme] = DatasetScheme(factory, usage)


def _source(name: str) -> Any:
    if name in DATASETS:
        return DATASETS[name]
    scheme, colon, argument = str(name).partition(":")
    if colon and scheme in DATASET_SCHEMES:
        if not argument.strip():
            raise UserError(f"data set {name!r} names no folder; write it as {DATASET_SCHEMES[scheme].usage}")
        return DATASET_SCHEMES[scheme].factory(name, argument)
    valid = ", ".join(sorted(DATASETS) + [s.usage for _, s in sorted(DATASET_SCHEMES.items())])
    close = difflib.get_close_matches(str(name).lower(), list(DATASETS) + [f"{k}:" for k in DATASET_SCHEMES],
                                      n=1, cutoff=0.4)
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


def with_normalisation(info: DataInfo, mean: Sequence[float] | None, std: Sequence[float] | None,
                       what: str = "data") -> DataInfo:
    """``info`` with its per-channel ``mean``/``std`` replaced where given (``None``: keep the data set's own).

    The normalisation the model's first layer applies. Raises :class:`UserError`
    (naming ``what.mean``/``what.std``) unless each has one finite entry per
    channel and every ``std`` entry is positive.
    """
    changes: dict[str, tuple[float, ...]] = {}
    for key, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        values = tuple(float(v) for v in values)
        if len(values) != info.channels:
            raise UserError(f"{what}.{key} has {len(values)} entries but data set {info.name!r} has {info.channels} "
                            f"channel(s); give one value per channel")
        if not all(math.isfinite(v) for v in values) or (key == "std" and any(v <= 0 for v in values)):
            rule = "positive and finite" if key == "std" else "finite"
            raise UserError(f"{what}.{key} entries must be {rule}, got {list(values)}")
        changes[key] = values
    return dataclasses.replace(info, **changes) if changes else info


def run_info(cfg: Any) -> DataInfo:
    """The :class:`DataInfo` a run builds its model for: ``cfg.data.dataset``'s, with ``data.mean``/``data.std``.

    ``data.mean``/``data.std`` ``null`` keep the data set's own normalisation
    (mean 0, std 1 for ``npy:`` and ``vnnlib:`` data). Give a loaded split this
    info with :meth:`ImageDataset.with_info`.
    """
    d = cfg.data
    return with_normalisation(dataset_info(d.dataset), d.mean, d.std)
