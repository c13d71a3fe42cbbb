"""Randomized smoothing (Cohen et al. 2019): the per-input certificate and the data-set runner.

:mod:`.certify` holds the math (sampling, Clopper-Pearson bound, radius);
:mod:`.run` certifies a data set into a resumable TSV with a certified-accuracy
table and plot. Every certificate holds with probability at least ``1 - alpha``.
"""

from abcrown_plugins.smoothing.certify import (
    ABSTAIN,
    NOISE_CHUNK,
    SmoothingResult,
    certify,
    check_settings,
    decide,
    max_certifiable_radius,
    noise_batches,
    noise_chunks,
    predict,
    radius_from_counts,
    sample_counts,
    warn_unreachable,
)

__all__ = ["ABSTAIN", "NOISE_CHUNK", "SmoothingResult", "certify", "check_settings", "decide", "max_certifiable_radius",
           "noise_batches", "noise_chunks", "predict", "radius_from_counts", "sample_counts", "warn_unreachable"]
