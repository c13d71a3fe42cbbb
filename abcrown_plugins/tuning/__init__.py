"""Throughput tuning of the hot loops: batch sizes chosen by measurement, the process's allocator settings.

:mod:`.calibrate` times a workload at a few batch sizes (interleaved repetitions,
medians), keeps the fastest per sample within a memory budget (or, with
``choose_option``, the fastest of equivalent ways, e.g. memory layouts) and caches the
choice under the user's cache folder, keyed by what the timing depends on (model
content, device, thread count, torch version). :mod:`.alloc` raises glibc's
mmap and trim thresholds for this process so that large batch buffers are reused
instead of mapped and page-faulted afresh on every call.

Importing this package does not import torch (the CLI calls
:func:`tune_allocator` before anything else); the names of :mod:`.calibrate`
are loaded on first use.
"""

from abcrown_plugins.tuning.alloc import tune_allocator

__all__ = ["Calibration", "Choice", "cache_folder", "choose_batch_size", "choose_option", "default_budget_mib",
           "model_digest", "peak_memory_mib", "tune_allocator"]

_CALIBRATE = {"Calibration", "Choice", "cache_folder", "choose_batch_size", "choose_option", "default_budget_mib",
              "model_digest", "peak_memory_mib"}


def __getattr__(name: str):
    if name in _CALIBRATE:
        from abcrown_plugins.tuning import calibrate
        return getattr(calibrate, name)
    raise AttributeError(f"module 'abcrown_plugins.tuning' has no attribute {name!r}")
