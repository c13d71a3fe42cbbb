"""In-memory image data sets: static metadata (:class:`DataInfo`) and pixels (:class:`ImageDataset`).

Every data set of the project, procedural or read from files, ends up as one
:class:`ImageDataset`: pixels ``N x C x H x W`` plus ``int64`` labels. Pixels are
kept as bytes where they are whole grey levels (four times smaller than ``float32``,
and exactly what the files hold); they become ``float32`` in ``[0, 1]`` only when
served, one batch at a time, on the requested device. Data whose values are not
whole grey levels (float arrays of the user's, the box centres of VNN-LIB
properties) is kept as ``float32`` and served as it is; such a set may carry the
exact input box of each example (:class:`InputBoxes`). Normalisation by
``mean``/``std`` is *not* applied here: it belongs to the model's first layer, so
that perturbation radii stay in pixel units (``eps = 2/255`` means two grey levels).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from abcrown_plugins.errors import UserError

__all__ = ["DataInfo", "ImageDataset", "InputBoxes"]


@dataclass(frozen=True)
class DataInfo:
    """What a data set is, known without loading it.

    Attributes:
        name: Registry name (``load_dataset(name, ...)``).
        num_classes: Number of classes; labels lie in ``[0, num_classes)``.
        channels: 1 (grey) or 3 (RGB).
        size: Image height and width in pixels (images are square).
        mean: Per-channel mean of the pixels in ``[0, 1]``, for the model's
            normalisation layer; ``len(mean) == channels``.
        std: Per-channel standard deviation, same units and length as ``mean``.
        class_names: Human-readable name of each class, ``len == num_classes``.
    """

    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"DataInfo {self.name!r}: channels must be 1 or 3, got {self.channels}")
        if self.size < 1 or self.num_classes < 2:
            raise ValueError(f"DataInfo {self.name!r}: size must be >= 1 and num_classes >= 2")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"DataInfo {self.name!r}: mean and std need one entry per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"DataInfo {self.name!r}: std entries must be positive")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"DataInfo {self.name!r}: need one class name per class")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape ``(C, H, W)`` of one image."""
        return (self.channels, self.size, self.size)


@dataclass(frozen=True)
class InputBoxes:
    """The exact input box of each example of a data set (e.g. the properties of a VNN-COMP benchmark).

    Attributes:
        lower: ``float64`` tensor ``N x C x H x W``, the lower corner of each box.
        upper: ``float64`` tensor of the same shape, ``upper >= lower``.
        sources: Where each box came from (e.g. ``vnnlib/prop_3.vnnlib``), ``len == N``.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.lower.dtype != torch.float64 or self.upper.dtype != torch.float64 or self.lower.dim() != 4 \
                or self.lower.shape != self.upper.shape or len(self.sources) != self.lower.shape[0]:
            raise ValueError("InputBoxes: lower and upper must be float64 N x C x H x W with one source each")

    def select(self, index: torch.Tensor) -> InputBoxes:
        """The boxes at ``index`` (``int64`` positions, in that order)."""
        return InputBoxes(self.lower[index], self.upper[index], tuple(self.sources[int(i)] for i in index))


class ImageDataset:
    """A labelled image data set held in memory.

    Attributes:
        labels: ``int64`` tensor ``N`` with values in ``[0, info.num_classes)``.
        info: Static metadata of the data set.
        attributes: ``int64`` tensors of length ``N``, one per named per-image
            attribute (the procedural data set records e.g. ``fg_color``); ``{}``
            for data read from files.
        boxes: The exact input box of each example (:class:`InputBoxes`), or
            ``None``; a data set read from VNN-LIB properties has them, and its
            images are the box centres.

    Pixels are given as ``uint8`` ``N x C x H x W`` (pixel = byte / 255; :attr:`images`)
    or, for data that is not whole grey levels, ``float32`` (served as they are,
    any finite range); :meth:`pixels` returns either as ``float32``.
    The object does not copy its tensors and treats them as read-only.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        info: DataInfo,
        attributes: Mapping[str, torch.Tensor] | None = None,
        boxes: InputBoxes | None = None,
    ) -> None:
        if images.dtype not in (torch.uint8, torch.float32) or images.dim() != 4:
            raise ValueError(
                f"{info.name}: images must be uint8 or float32 N x C x H x W, got {images.dtype} {tuple(images.shape)}"
            )
        if images.dtype == torch.float32 and not bool(torch.isfinite(images).all()):
            raise ValueError(f"{info.name}: float images must be finite")
        if tuple(images.shape[1:]) != info.shape:
            raise ValueError(f"{info.name}: image shape {tuple(images.shape[1:])} differs from info {info.shape}")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError(f"{info.name}: labels must be int64 of length {images.shape[0]}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
            raise ValueError(f"{info.name}: labels must lie in [0, {info.num_classes})")
        attributes = dict(attributes or {})
        for key, value in attributes.items():
            if value.dtype != torch.int64 or value.shape != labels.shape:
                raise ValueError(f"{info.name}: attribute {key!r} must be int64 of length {len(labels)}")
        if boxes is not None and tuple(boxes.lower.shape) != tuple(images.shape):
            raise ValueError(f"{info.name}: boxes of shape {tuple(boxes.lower.shape)} differ from the images")
        self._pixels = images
        self.labels = labels
        self.info = info
        self.attributes: dict[str, torch.Tensor] = attributes
        self.boxes = boxes

    @property
    def is_bytes(self) -> bool:
        """Whether the pixels are whole grey levels held as ``uint8`` (else ``float32`` as given)."""
        return self._pixels.dtype == torch.uint8

    @property
    def images(self) -> torch.Tensor:
        """The ``uint8`` pixels ``N x C x H x W`` (pixel = byte / 255).

        Raises :class:`UserError` for a data set of float pixels (not whole grey
        levels), which only :meth:`pixels` and :meth:`batches` serve.
        """
        if not self.is_bytes:
            raise UserError(f"data set {self.info.name!r} holds float pixels that are not whole grey levels, and this "
                            "step reads uint8 images only; store the images as uint8 (round(x * 255)) to use it here")
        return self._pixels

    def pixels(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """The images at ``index`` (default: all) as ``float32`` ``n x C x H x W``, exactly as served."""
        raw = self._pixels if index is None else self._pixels[index]
        return raw.float().div_(255.0) if raw.dtype == torch.uint8 else raw.clone()

    def storage(self) -> torch.Tensor:
        """The pixels as held: ``uint8`` (whole grey levels) or ``float32`` ``N x C x H x W``; read-only."""
        return self._pixels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Return image ``i`` as ``float32`` ``C x H x W`` (in ``[0, 1]`` for bytes) and its label."""
        return self.pixels(i), int(self.labels[i])

    def __repr__(self) -> str:
        attrs = f", attributes={sorted(self.attributes)}" if self.attributes else ""
        kind = "" if self.is_bytes else ", float"
        boxes = ", boxes" if self.boxes is not None else ""
        return f"ImageDataset({self.info.name!r}, n={len(self)}, shape={self.info.shape}{kind}{attrs}{boxes})"

    def select(self, index: torch.Tensor) -> ImageDataset:
        """Return the data set restricted to ``index`` (``int64`` positions, in that order)."""
        return ImageDataset(
            self._pixels[index],
            self.labels[index],
            self.info,
            {key: value[index] for key, value in self.attributes.items()},
            None if self.boxes is None else self.boxes.select(index),
        )

    def with_info(self, info: DataInfo) -> ImageDataset:
        """The same examples described by ``info`` (e.g. with a run's ``data.mean``/``data.std``).

        ``info`` must keep the image shape and may only widen the classes.
        """
        return ImageDataset(self._pixels, self.labels, info, self.attributes, self.boxes)

    def subset(self, n: int | None, seed: int = 0) -> ImageDataset:
        """Return ``n`` samples drawn without replacement, stratified by class.

        The samples are the first ``n`` of a seeded permutation in which every class
        is spread evenly, so each class gets ``n * (its share)`` samples up to
        rounding, and ``subset(n, seed)`` is contained in ``subset(m, seed)`` for
        ``n <= m``. The chosen samples keep their original relative order.
        ``n`` ``None`` or ``>= len(self)`` returns ``self`` unchanged.
        """
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise UserError(f"cannot take a subset of {n} samples from {self.info.name}; use a positive number")
        generator = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=generator)
        labels = self.labels[perm]
        # Rank of each permuted sample among the permuted samples of its class.
        by_class = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=self.info.num_classes)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(labels)
        rank[by_class] = torch.arange(len(self)) - starts[labels[by_class]]
        # Spread each class evenly over [0, 1); ties are broken by the permutation.
        key = (rank.double() + 0.5) / counts[labels].double()
        order = torch.argsort(key, stable=True)
        chosen, _ = torch.sort(perm[order[:n]])
        return self.select(chosen)

    def num_batches(self, batch_size: int) -> int:
        """Number of batches :meth:`batches` yields (the last one may be smaller)."""
        _check_batch_size(batch_size)
        return -(-len(self) // batch_size)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches covering every sample exactly once.

        ``x`` is ``float32`` ``B x C x H x W`` (:meth:`pixels`), ``y`` is ``int64`` ``B``,
        both on ``device`` (default: CPU); ``B == batch_size`` except possibly for
        the last batch. With ``shuffle`` the order is a permutation drawn from a
        ``torch.Generator`` seeded with ``seed`` only, so passing ``seed=base + epoch``
        makes every epoch deterministic and a run resumable at any epoch.
        """
        _check_batch_size(batch_size)
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        for start in range(0, n, batch_size):
            if shuffle:
                index = order[start : start + batch_size]
                images, labels = self._pixels[index], self.labels[index]
            else:
                images, labels = self._pixels[start : start + batch_size], self.labels[start : start + batch_size]
            if images.dtype == torch.uint8:  # move bytes, then convert on the device: a quarter of the transfer
                x = images.to(device, non_blocking=True).float().div_(255.0)
            else:  # a copy, so that a caller changing x in place never changes the data set
                x = images.to(device, non_blocking=True, copy=True)
            yield x, labels.to(device, non_blocking=True)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}; fix the batch_size setting")
