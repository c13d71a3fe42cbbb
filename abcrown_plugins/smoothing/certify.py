"""Randomized-smoothing certificate of Cohen, Rosenfeld and Kolter (2019), for one input.

The smoothed classifier is ``g(x) = argmax_c P(f(x + d) = c)`` with
``d ~ N(0, sigma^2 I)`` added in [0,1] pixel space (not clipped, as in the
paper; normalisation is the model's first layer). ``f`` is any ``forward``
mapping a batch ``B x C x H x W`` of noisy inputs to logits ``B x classes``:
a model, or a differential engine that computes the same logits.

Guarantees (each holds with probability at least ``1 - alpha`` over the
sampling noise):

* :func:`certify`: if it returns class ``cA`` with radius ``R > 0``, then
  ``g(x + delta) = cA`` for every ``||delta||_2 < R``. ``n0`` selection samples
  pick ``cA``; ``n`` separate estimation samples give the one-sided
  Clopper-Pearson lower bound ``pA_lower`` of ``P(f(x + d) = cA)``;
  ``R = sigma * Phi^-1(pA_lower)``. It abstains (``-1``, radius 0) when
  ``pA_lower <= 1/2``. :func:`decide` is that decision from the two samples'
  counts; every certifier of this package (also the differential one) calls it.
* :func:`predict`: if it returns ``c != -1``, then ``g(x) = c``. Two-sided
  binomial test of the top two counts at level ``alpha``, else abstain.

Sampling is reproducible and independent of the batch size: :func:`noise_chunks`
draws the noise from the given ``torch.Generator`` (on the generator's device)
in fixed chunks of :data:`NOISE_CHUNK` samples, and :func:`noise_batches` cuts
that one stream into forward batches of any size, so the same generator state
gives the same noisy inputs, counts and certificate whatever ``forward`` and
``batch_size`` are.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from scipy.stats import beta, binomtest, norm
from torch import Tensor

from abcrown_plugins.errors import UserError

__all__ = [
    "ABSTAIN",
    "SmoothingResult",
    "certify",
    "check_settings",
    "class_counts",
    "decide",
    "max_certifiable_radius",
    "NOISE_CHUNK",
    "noise_batches",
    "noise_chunks",
    "predict",
    "radius_from_counts",
    "sample_counts",
    "warn_unreachable",
]

#: Class index returned when the smoothed classifier abstains.
ABSTAIN = -1
#: Samples per chunk of the noise stream (:func:`noise_chunks`): the old fixed ``smoothing.batch_size``, which
#: the noise used to be drawn in, so the certificates of runs at that batch size are unchanged.
NOISE_CHUNK = 1000

Forward = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SmoothingResult:
    """Outcome of :func:`certify` for one input.

    Attributes:
        prediction: Certified class, or ``-1`` (abstain).
        radius: Certified L2 radius in [0,1] pixel units; 0 when abstaining.
        pA_lower: One-sided Clopper-Pearson lower bound (level ``alpha``) on the
            probability of the selected class under noise.
        counts: Per-class counts of the ``n`` estimation samples (length = classes).
        n0: Selection samples. n: Estimation samples.
        alpha: Failure probability: the certificate holds with probability >= 1 - alpha.
        sigma: Noise standard deviation in [0,1] pixel units.
        time_s: Wall time of the whole certification, seconds.
    """

    prediction: int
    radius: float
    pA_lower: float
    counts: list[int]
    n0: int
    n: int
    alpha: float
    sigma: float
    time_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def check_settings(sigma: float, alpha: float, n: int, n0: int | None = None, batch_size: int = 1) -> None:
    """Raise :class:`UserError` unless ``sigma > 0``, ``0 < alpha < 1``, ``1 <= n0 <= n``, ``batch_size >= 1``."""
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise UserError(f"smoothing sigma must be a positive number, got {sigma!r}; set smoothing.sigma (e.g. 0.25)")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise UserError(f"smoothing alpha must lie strictly between 0 and 1, got {alpha!r}; "
                        "set smoothing.alpha (e.g. 0.001)")
    if not isinstance(n, int) or n < 1:
        raise UserError(f"smoothing n (estimation samples) must be a positive integer, got {n!r}")
    if n0 is not None and (not isinstance(n0, int) or n0 < 1 or n0 > n):
        raise UserError(f"smoothing n0 (selection samples) must lie in [1, n={n}], got {n0!r}; "
                        "lower smoothing.n0 or raise smoothing.n")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"smoothing batch_size must be a positive integer, got {batch_size!r}")


def max_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius :func:`certify` can return with ``n`` samples at level ``alpha``.

    Reached when all ``n`` estimation samples agree: ``pA_lower = alpha^(1/n)``.
    """
    check_settings(sigma, alpha, n)
    return radius_from_counts(n, n, alpha, sigma)[1]


def warn_unreachable(radii, n: int, alpha: float, sigma: float) -> str | None:
    """Warn (``UserWarning``) and return the message when some radius in ``radii`` cannot be certified."""
    top = max_certifiable_radius(n, alpha, sigma)
    too_big = [float(r) for r in radii if float(r) >= top]
    if not too_big:
        return None
    msg = (f"with n={n} and alpha={alpha:g} at sigma={sigma:g} no radius of {top:.4g} or more can be "
           f"certified, so radius {', '.join(f'{r:g}' for r in too_big)} is out of reach; "
           f"raise smoothing.n or smoothing.sigma")
    warnings.warn(msg, UserWarning, stacklevel=2)
    return msg


def radius_from_counts(count_a: int, n: int, alpha: float, sigma: float) -> tuple[float, float]:
    """``(pA_lower, radius)`` from ``count_a`` hits of the selected class among ``n`` samples.

    ``pA_lower`` is the one-sided Clopper-Pearson lower bound at level ``alpha``
    (the ``alpha`` quantile of ``Beta(count_a, n - count_a + 1)``; 0 when
    ``count_a == 0``); ``radius = sigma * Phi^-1(pA_lower)`` when
    ``pA_lower > 1/2``, else 0 (abstain).
    """
    if not 0 <= count_a <= n:
        raise ValueError(f"count_a must lie in [0, n={n}], got {count_a}")
    p_lower = float(beta.ppf(alpha, count_a, n - count_a + 1)) if count_a > 0 else 0.0
    if p_lower <= 0.5:
        return p_lower, 0.0
    return p_lower, float(sigma * norm.ppf(p_lower))


def noise_chunks(shape: Sequence[int], num: int, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32) -> Iterator[Tensor]:
    """Yield the standard normal noise of ``num`` samples of ``shape``, chunk by chunk: the noise stream.

    Chunk ``k`` holds samples ``k * NOISE_CHUNK ...`` (``min(NOISE_CHUNK, rest) x *shape``),
    drawn with ``normal_`` from ``generator`` into one reused buffer on the
    generator's device: bit for bit ``torch.randn`` of the chunk's size. So the
    stream depends on ``num``, the generator's state and ``NOISE_CHUNK`` only,
    never on how a consumer batches it. Each chunk is a view of the reused
    buffer, valid until the next one is requested.
    """
    buf = torch.empty((min(NOISE_CHUNK, num), *shape), dtype=dtype, device=generator.device)
    left = num
    while left > 0:
        k = min(NOISE_CHUNK, left)
        chunk = buf[:k]
        chunk.normal_(generator=generator)
        yield chunk
        left -= k


def noise_batches(x: Tensor, num: int, sigma: float, batch_size: int, generator: torch.Generator, *,
                  reuse: bool = False,
                  memory_format: torch.memory_format = torch.contiguous_format) -> Iterator[Tensor]:
    """Yield ``num`` noisy copies of ``x`` (``C x H x W``) in batches ``b x C x H x W``, ``b <= batch_size``.

    The noisy samples are ``x + sigma * z`` for the samples ``z`` of
    :func:`noise_chunks` in order (not clipped), computed as
    ``(z * sigma) + x`` in ``x``'s dtype on ``x``'s device: bit for bit today's
    and earlier releases' ``x.unsqueeze(0) + torch.randn(...) * sigma`` at batch
    size ``NOISE_CHUNK``, and the same samples at every other batch size (only
    how they are cut into batches differs). These are exactly the inputs
    :func:`sample_counts` feeds to ``forward``, so counts and certificates do
    not depend on ``batch_size``.

    ``reuse``: every batch is a view of one buffer that the next batch
    overwrites (the consumer is done with a batch before asking for the next);
    False: each batch is a tensor of its own. ``memory_format``: the batches'
    layout (e.g. ``torch.channels_last`` for a channels-last network; the values
    are the same).
    """
    if x.dim() != 3:
        raise ValueError(f"x must be one image C x H x W, got shape {tuple(x.shape)}")
    if num < 1:
        return
    shape = (min(batch_size, num), *x.shape)
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=memory_format) if reuse else None
    chunks = noise_chunks(x.shape, num, generator, x.dtype)
    chunk, pos = None, 0
    left = num
    while left > 0:
        b = min(batch_size, left)
        dst = out[:b] if out is not None else torch.empty((b, *x.shape), dtype=x.dtype, device=x.device,
                                                         memory_format=memory_format)
        i = 0
        while i < b:
            if chunk is None or pos == chunk.shape[0]:
                chunk, pos = next(chunks), 0
            k = min(b - i, chunk.shape[0] - pos)
            torch.mul(chunk[pos:pos + k].to(x.device), sigma, out=dst[i:i + k])
            pos += k
            i += k
        yield dst.add_(x)
        left -= b


def class_counts(logits: Tensor, num_classes: int) -> Tensor:
    """Per-class counts (``int64``, length ``num_classes``, CPU) of ``logits.argmax(1)``, logits ``B x classes``.

    Refuses (UserError) logits with a NaN or infinity: their argmax would be an
    arbitrary class (NaN counts as the largest) and the certificate built on it
    a confident wrong answer.
    """
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).any(1).sum())
        raise UserError(f"the network's logits are not finite (NaN or inf) on {bad} of {logits.shape[0]} noisy "
                        f"inputs, so no class can be counted; check the network's weights (or lower "
                        f"smoothing.sigma if they are huge)")
    return torch.bincount(logits.argmax(1).cpu(), minlength=num_classes)


@torch.no_grad()
def sample_counts(forward: Forward, x: Tensor, num: int, sigma: float, num_classes: int, batch_size: int,
                  generator: torch.Generator, *,
                  memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """Per-class counts (``int64``, length ``num_classes``, on the CPU) of ``argmax forward(x + noise)``;
    non-finite logits are refused (:func:`class_counts`).

    The noisy batches (:func:`noise_batches`, in ``memory_format``) share one
    buffer: ``forward`` must not keep its input past the call. The counts do not
    depend on ``batch_size``."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for batch in noise_batches(x, num, sigma, batch_size, generator, reuse=True, memory_format=memory_format):
        logits = forward(batch)
        if logits.dim() != 2 or logits.shape != (batch.shape[0], num_classes):
            raise ValueError(f"forward returned shape {tuple(logits.shape)}, expected "
                             f"({batch.shape[0]}, {num_classes})")
        counts += class_counts(logits, num_classes)
    return counts


def decide(selection: Tensor, counts: Tensor, n0: int, n: int, alpha: float, sigma: float,
           seconds: float) -> SmoothingResult:
    """CERTIFY's decision from its two samples' per-class counts: the class, or abstain, and the radius.

    ``selection``: counts of the ``n0`` selection samples; ``cA`` is their
    argmax (the lowest index on ties). ``counts``: counts of the ``n``
    estimation samples. ``pA_lower`` is the one-sided Clopper-Pearson lower
    bound at level ``alpha`` from ``counts[cA]`` hits among ``n``
    (:func:`radius_from_counts`). Returns ``cA`` with radius
    ``sigma * Phi^-1(pA_lower)`` when ``pA_lower > 1/2``, else abstains
    (:data:`ABSTAIN`, radius 0, same ``pA_lower``); ``time_s`` is ``seconds``.

    Guarantee (module docstring): if the estimation samples are drawn
    independently of the selection samples, a returned class ``cA`` with
    radius ``R`` satisfies ``g(x + delta) = cA`` for every ``||delta||_2 < R``,
    with probability at least ``1 - alpha``.
    """
    c_a = int(selection.argmax())
    p_lower, radius = radius_from_counts(int(counts[c_a]), n, alpha, sigma)
    prediction = c_a if p_lower > 0.5 else ABSTAIN
    return SmoothingResult(prediction, radius if prediction != ABSTAIN else 0.0, p_lower,
                           [int(c) for c in counts], n0, n, float(alpha), float(sigma), seconds)


def certify(forward: Forward, x: Tensor, n0: int, n: int, alpha: float, sigma: float, num_classes: int,
            batch_size: int, generator: torch.Generator, *,
            memory_format: torch.memory_format = torch.contiguous_format) -> SmoothingResult:
    """CERTIFY of Cohen et al.: select with ``n0`` samples, estimate with ``n`` fresh ones (module docstring).

    The counts of the two samples go to :func:`decide`. The result does not
    depend on ``batch_size`` (:func:`noise_batches`); ``memory_format``: the
    noisy batches' layout (:func:`sample_counts`).
    """
    check_settings(sigma, alpha, n, n0, batch_size)
    t0 = time.perf_counter()
    selection = sample_counts(forward, x, n0, sigma, num_classes, batch_size, generator, memory_format=memory_format)
    counts = sample_counts(forward, x, n, sigma, num_classes, batch_size, generator, memory_format=memory_format)
    return decide(selection, counts, n0, n, alpha, sigma, time.perf_counter() - t0)


def predict(forward: Forward, x: Tensor, n: int, alpha: float, sigma: float, num_classes: int, batch_size: int,
            generator: torch.Generator) -> int:
    """PREDICT of Cohen et al.: the top class if a two-sided binomial test of the top two counts rejects
    equality at level ``alpha``, else ``-1`` (abstain)."""
    check_settings(sigma, alpha, n, None, batch_size)
    counts = sample_counts(forward, x, n, sigma, num_classes, batch_size, generator)
    top2 = torch.topk(counts, 2)
    n_a, n_b = int(top2.values[0]), int(top2.values[1])
    if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(top2.indices[0])
