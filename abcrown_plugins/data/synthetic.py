"""Procedural shapes data set, generated at run time (nothing is downloaded).

Each image shows one foreground shape on a background; the class is the shape
type (:data:`SHAPES`). Everything else is drawn at random per image and
recorded as an ``int64`` attribute (:data:`ATTRIBUTES`), so that tasks other than
shape classification can be built on the same pixels:

=============  ====================================  =================================
attribute      values                                rendered as
=============  ====================================  =================================
shape          the 10 :data:`SHAPES` (= the label)   signed-distance mask of the shape
fg_color       red, green, blue, yellow              hue of the shape (bright on dark
                                                     backgrounds, dark on light ones)
bg_dark        light, dark                           background luminance 0.75-0.95 /
                                                     0.03-0.20 (+- tint, gradient)
size           small, large                          shape radius 0.42-0.52 / 0.62-0.74
                                                     of the half-image
position       left, right                           shape centre in the left / right
                                                     half (0.10-0.30 of the half-image
                                                     off-centre)
noise_level    low, high                             Gaussian pixel noise, std 0.02 /
                                                     0.07 (i.e. ~5 / ~18 grey levels)
=============  ====================================  =================================

Continuous nuisances, not recorded: vertical jitter, rotation (+-0.2 rad),
radius within its bin, foreground colour jitter, background tint and linear
gradient, the noise itself. Classes differ by large-scale structure (outline,
holes, stripes of ~1/3 the shape width), not single-pixel detail, and the
foreground contrasts with the background by >= ~0.1 in luminance (mostly 0.3-0.7), so
that small Linf perturbations (2/255) cannot blur the classes into each other.

Determinism and streams. Images are generated in chunks of :data:`CHUNK`;
chunk ``c`` of split ``s`` with seed ``seed`` draws all its randomness from a
``numpy`` PCG64 generator seeded by ``SeedSequence(seed, spawn_key=(s, c))``.
Spawn keys make the train and test streams (and every chunk) independent
streams by construction, and the first ``k`` images do not depend on how many
are generated. Within a chunk the label and every attribute are exact balanced
permutations (100 images per class, 250 per colour, 500 per binary value), drawn
independently of each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from abcrown_plugins.data.base import DataInfo, ImageDataset
from abcrown_plugins.data.registry import SPLITS, DatasetSource, register_dataset

__all__ = [
    "ATTRIBUTES",
    "CHUNK",
    "DEFAULT_SIZES",
    "SHAPES",
    "SyntheticParams",
    "generate_synthetic",
    "render",
    "sample_params",
]

SHAPES: tuple[str, ...] = (
    "disc",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal_bars",
    "vertical_bars",
    "diagonal_stripes",
    "checkerboard",
    "dot_grid",
)

#: Per-image attributes and the meaning of each of their integer values.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "fg_color": ("red", "green", "blue", "yellow"),
    "bg_dark": ("light", "dark"),
    "size": ("small", "large"),
    "position": ("left", "right"),
    "noise_level": ("low", "high"),
}

#: Images per independently seeded chunk; a multiple of every attribute's arity.
CHUNK = 1000

#: Number of images per split when ``num`` is not given.
DEFAULT_SIZES: dict[str, int] = {"train": 6000, "test": 1000}

# Foreground palettes, RGB in [0, 1], indexed [bg_dark][fg_color]: dark colours
# on light backgrounds, bright ones on dark backgrounds. Their luminances are
# spread (dark 0.12 / 0.32 / 0.23 / 0.42, bright 0.50 / 0.77 / 0.65 / 0.94 for
# red / green / blue / yellow) so that the colour stays visible, as grey level,
# in the one-channel variant, and each stays >= ~0.1 from its background.
_PALETTE = torch.tensor(
    [
        [[0.35, 0.02, 0.02], [0.05, 0.50, 0.10], [0.12, 0.18, 0.75], [0.50, 0.45, 0.02]],
        [[1.00, 0.30, 0.25], [0.45, 1.00, 0.45], [0.50, 0.65, 1.00], [1.00, 1.00, 0.45]],
    ]
)
_LUMA = torch.tensor([0.299, 0.587, 0.114])
_NOISE_STD = (0.02, 0.07)
_RADIUS = ((0.42, 0.52), (0.62, 0.74))
_BG_LEVEL = ((0.75, 0.95), (0.03, 0.20))  # indexed by bg_dark


@dataclass(frozen=True)
class SyntheticParams:
    """Everything that determines ``n`` images; tensors of length ``n``.

    Geometry is in image units where the image spans ``[-1, 1]`` in x (right)
    and y (down). Colours are RGB in ``[0, 1]``.

    Attributes:
        attributes: The recorded ``int64`` attributes, keyed as in :data:`ATTRIBUTES`.
        center: ``n x 2`` shape centre (x, y).
        radius: ``n`` shape radius.
        angle: ``n`` rotation in radians.
        fg: ``n x 3`` foreground colour.
        bg: ``n x 3`` background colour at the image centre.
        gradient: ``n x 2`` background slope per image unit in x and y.
        noise_std: ``n`` standard deviation of the pixel noise.
        noise_seed: Seed of the PCG64 stream drawing the pixel noise, image after image.
    """

    attributes: dict[str, torch.Tensor]
    center: torch.Tensor
    radius: torch.Tensor
    angle: torch.Tensor
    fg: torch.Tensor
    bg: torch.Tensor
    gradient: torch.Tensor
    noise_std: torch.Tensor
    noise_seed: int


def sample_params(rng: np.random.Generator, n: int) -> SyntheticParams:
    """Draw the parameters of ``n`` images (``n`` a multiple of 20 balances every attribute)."""

    def balanced(k: int) -> torch.Tensor:
        return torch.from_numpy(rng.permutation(n) % k).long()

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.uniform(low, high, size=(n, *shape))).float()

    attributes = {key: balanced(len(values)) for key, values in ATTRIBUTES.items()}
    dark, large = attributes["bg_dark"], attributes["size"]

    side = attributes["position"].float() * 2 - 1
    center = torch.stack([side * uniform(0.10, 0.30), uniform(-0.20, 0.20)], dim=1)
    radius_bins = torch.tensor(_RADIUS)[large]
    radius = radius_bins[:, 0] + (radius_bins[:, 1] - radius_bins[:, 0]) * uniform(0, 1)
    angle = uniform(-0.2, 0.2)

    fg = (_PALETTE[dark, attributes["fg_color"]] + uniform(-0.04, 0.04, 3)).clamp(0, 1)
    level_bins = torch.tensor(_BG_LEVEL)[dark]
    level = level_bins[:, 0] + (level_bins[:, 1] - level_bins[:, 0]) * uniform(0, 1)
    bg = level[:, None] + uniform(-0.04, 0.04, 3)
    direction = uniform(0, 2 * math.pi)
    slope = uniform(0.0, 0.08)
    gradient = torch.stack([slope * torch.cos(direction), slope * torch.sin(direction)], dim=1)
    noise_std = torch.tensor(_NOISE_STD)[attributes["noise_level"]]
    noise_seed = int(rng.integers(0, 2**63 - 1))
    return SyntheticParams(attributes, center, radius, angle, fg, bg, gradient, noise_std, noise_seed)


# Signed distance functions of the shapes in the shape's own frame, where the
# shape spans about [-1, 1]: negative inside, positive outside, in those units.
# Their gradient norm is <= ~1, so the mask edge is about a pixel wide.
_Sdf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _box(x: torch.Tensor, y: torch.Tensor, half: float) -> torch.Tensor:
    return torch.maximum(x.abs(), y.abs()) - half


def _stripes(t: torch.Tensor, period: float) -> torch.Tensor:
    """Stripes of width ``period / 2`` centred on ``t = k * period``."""
    return (torch.remainder(t / period + 0.5, 1.0) - 0.5).abs() * period - period / 4


def _disc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.hypot(x, y) - 0.9


def _square(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _box(x, y, 0.8)


def _triangle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Apex (0, -1) at the top, base y = 0.6 with half-width 1.
    norm = math.hypot(1.6, 1.0)
    right = (1.6 * x - (y + 1.0)) / norm
    left = (-1.6 * x - (y + 1.0)) / norm
    return torch.maximum(torch.maximum(left, right), y - 0.6)


def _cross(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    ax, ay = x.abs(), y.abs()
    return torch.minimum(torch.maximum(ax - 0.3, ay - 0.95), torch.maximum(ax - 0.95, ay - 0.3))


def _ring(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (torch.hypot(x, y) - 0.68).abs() - 0.24


def _horizontal_bars(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.maximum(_stripes(y, 0.7), _box(x, y, 0.9))


def _vertical_bars(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.maximum(_stripes(x, 0.7), _box(x, y, 0.9))


def _diagonal_stripes(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.maximum(_stripes((x + y) / math.sqrt(2), 0.7), _box(x, y, 0.85))


def _checkerboard(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # 3 x 3 cells of side 0.6; cells with even index sum (corners, centre) are filled.
    cell = 0.6
    ix = torch.round(x / cell).clamp(-1, 1)
    iy = torch.round(y / cell).clamp(-1, 1)
    inner = torch.minimum(cell / 2 - (x - ix * cell).abs(), cell / 2 - (y - iy * cell).abs())
    even = torch.remainder(ix + iy, 2) == 0
    return torch.maximum(torch.where(even, -inner, inner), _box(x, y, 0.9))


def _dot_grid(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # 3 x 3 dots of radius 0.22 at spacing 0.6.
    step = 0.6
    dx = x - torch.round(x / step).clamp(-1, 1) * step
    dy = y - torch.round(y / step).clamp(-1, 1) * step
    return torch.hypot(dx, dy) - 0.22


_SDFS: tuple[_Sdf, ...] = (
    _disc,
    _square,
    _triangle,
    _cross,
    _ring,
    _horizontal_bars,
    _vertical_bars,
    _diagonal_stripes,
    _checkerboard,
    _dot_grid,
)


def render(params: SyntheticParams, size: int, channels: int) -> torch.Tensor:
    """Render the images described by ``params``.

    Returns ``uint8`` ``n x channels x size x size``; ``channels`` 1 renders the
    luminance (0.299 R + 0.587 G + 0.114 B) of the RGB image, then adds the noise.
    Pixel centres sit at ``(i + 0.5) * 2 / size - 1``, so one parameter set gives
    the same picture at every resolution.
    """
    n = params.radius.shape[0]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    u = coords.view(1, 1, size) - params.center[:, 0].view(n, 1, 1)
    v = coords.view(1, size, 1) - params.center[:, 1].view(n, 1, 1)
    cos, sin = torch.cos(params.angle).view(n, 1, 1), torch.sin(params.angle).view(n, 1, 1)
    inv_r = (1.0 / params.radius).view(n, 1, 1)
    x = (u * cos + v * sin) * inv_r
    y = (v * cos - u * sin) * inv_r

    distance = torch.empty(n, size, size)
    shape = params.attributes["shape"]
    for index, sdf in enumerate(_SDFS):
        rows = torch.nonzero(shape == index).squeeze(1)
        if rows.numel():
            distance[rows] = sdf(x[rows], y[rows])
    # Shape-frame units -> pixels; a linear ramp one pixel wide anti-aliases the edge.
    pixels = distance * (params.radius * (size / 2.0)).view(n, 1, 1)
    mask = (0.5 - pixels).clamp_(0.0, 1.0).unsqueeze(1)

    ramp = params.gradient[:, 0].view(n, 1, 1) * coords.view(1, 1, size)
    ramp = ramp + params.gradient[:, 1].view(n, 1, 1) * coords.view(1, size, 1)
    background = params.bg.view(n, 3, 1, 1) + ramp.unsqueeze(1)
    image = torch.lerp(background, params.fg.view(n, 3, 1, 1).expand_as(background), mask)
    if channels == 1:
        image = torch.einsum("nchw,c->nhw", image, _LUMA).unsqueeze(1)
    elif channels != 3:
        raise ValueError(f"channels must be 1 or 3, got {channels}")

    # Drawn image after image, so the noise of image i does not depend on n.
    noise_rng = np.random.Generator(np.random.PCG64(params.noise_seed))
    noise = torch.from_numpy(noise_rng.standard_normal(tuple(image.shape), dtype=np.float32))
    image = image + noise * params.noise_std.view(n, 1, 1, 1)
    return image.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)


def generate_synthetic(
    n: int, seed: int, split: str, size: int = 32, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Generate the first ``n`` images of stream ``(seed, split)``.

    Returns ``(images, labels, attributes)``: ``uint8`` ``n x channels x size x size``,
    ``int64`` ``n`` shape labels, and ``int64`` ``n`` tensors keyed as
    :data:`ATTRIBUTES` (``attributes["shape"]`` equals ``labels``). Deterministic
    in ``(n, seed, split, size, channels)``; image ``i`` does not depend on ``n``.
    ``seed`` is taken modulo 2**64.
    """
    if n < 1:
        raise ValueError(f"number of images must be positive, got {n}")
    split_key = SPLITS.index(split)
    images, attributes = [], []
    for chunk in range((n + CHUNK - 1) // CHUNK):
        sequence = np.random.SeedSequence(seed % 2**64, spawn_key=(split_key, chunk))
        params = sample_params(np.random.Generator(np.random.PCG64(sequence)), CHUNK)
        count = min(CHUNK, n - chunk * CHUNK)
        if count < CHUNK:
            params = _head(params, count)
        images.append(render(params, size, channels))
        attributes.append(params.attributes)
    merged = {key: torch.cat([a[key] for a in attributes]) for key in ATTRIBUTES}
    return torch.cat(images), merged["shape"].clone(), merged


def _head(params: SyntheticParams, count: int) -> SyntheticParams:
    """The parameters of the first ``count`` images of ``params``."""
    return SyntheticParams(
        {key: value[:count] for key, value in params.attributes.items()},
        params.center[:count],
        params.radius[:count],
        params.angle[:count],
        params.fg[:count],
        params.bg[:count],
        params.gradient[:count],
        params.noise_std[:count],
        params.noise_seed,
    )


# Pixel statistics of the generator (train split, seed 0, 60000 images), measured
# once and rounded to 4 digits; they are properties of the distribution, and the
# test suite re-measures them on a smaller sample.
_MEAN_RGB: tuple[float, ...] = (0.4844, 0.4869, 0.4656)
_STD_RGB: tuple[float, ...] = (0.3577, 0.3586, 0.3615)
_MEAN_GRAY: tuple[float, ...] = (0.4839,)
_STD_GRAY: tuple[float, ...] = (0.3491,)


class _Synthetic(DatasetSource):
    """Base of the two procedural variants; subclasses set ``info``."""

    @classmethod
    def load(cls, split: str, root: str | None, num: int | None, seed: int) -> ImageDataset:
        """Generate ``num`` (default :data:`DEFAULT_SIZES`) images of ``split``; ``root`` is ignored."""
        n = DEFAULT_SIZES[split] if num is None else num
        info = cls.info
        images, labels, attributes = generate_synthetic(n, seed, split, info.size, info.channels)
        return ImageDataset(images, labels, info, attributes)


@register_dataset("synthetic")
class Synthetic(_Synthetic):
    """RGB 3 x 32 x 32 shapes, 10 classes."""

    info = DataInfo("synthetic", len(SHAPES), 3, 32, _MEAN_RGB, _STD_RGB, SHAPES)


@register_dataset("synthetic_gray")
class SyntheticGray(_Synthetic):
    """The same shapes rendered at 1 x 28 x 28 (luminance), 10 classes."""

    info = DataInfo("synthetic_gray", len(SHAPES), 1, 28, _MEAN_GRAY, _STD_GRAY, SHAPES)
