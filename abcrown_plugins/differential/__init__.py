"""Exact sparse differential certification of fine-tuned networks (seed 000, section 3.1).

- :mod:`.delta`: what a fine-tuned network changed (per module, per output
  channel) and random sparse fine-tuned networks of the seed's three patterns;
- :mod:`.engine`: :class:`DifferentialEngine`, the fine-tuned networks' logits
  from the base network's shared work, equal to the dense networks' logits up to
  float32 rounding and with identical argmaxes (near-tie guard);
- :mod:`.certify`: smoothing counts and certificates for T networks from one
  noise draw, base traces that let later networks reuse a base
  certification's work, and the side-by-side comparison with the dense
  certifier (:func:`compare_certify`, :class:`ExactnessError`);
- :mod:`.run`: a data set certified densely and by the engine side by side,
  resumable, with seed 000's time saved per accounting (live, trace, multi-task).
"""

from abcrown_plugins.differential.certify import (BaseTrace, Compared, ExactnessError, certify_from_traces,
                                                  compare_certify, multitask_certify, multitask_counts,
                                                  record_certify_traces, record_trace, trace_counts, traced_certify)
from abcrown_plugins.differential.delta import (ALLOCATIONS, PATTERNS, Change, calibrate_batchnorm,
                                                center_classifier, module_changes, random_finetuned)
from abcrown_plugins.differential.engine import (BREAK_EVEN, LIVE_OVERHEAD, TIE_TOL, DifferentialEngine,
                                                 EngineStats, TaskPlan)
from abcrown_plugins.differential.run import TIMING_COLUMNS, TimeSaved, certify_compared, read_timing, time_saved

__all__ = ["ALLOCATIONS", "PATTERNS", "Change", "calibrate_batchnorm", "center_classifier", "module_changes",
           "random_finetuned", "BREAK_EVEN", "LIVE_OVERHEAD", "TIE_TOL", "DifferentialEngine", "EngineStats",
           "TaskPlan", "BaseTrace", "Compared", "ExactnessError", "certify_from_traces", "compare_certify",
           "multitask_certify", "multitask_counts", "record_certify_traces", "record_trace", "trace_counts",
           "traced_certify", "TIMING_COLUMNS", "TimeSaved", "certify_compared", "read_timing", "time_saved"]
