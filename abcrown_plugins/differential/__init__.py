"""Exact sparse differential certification of fine-tuned networks (seed 000, section 3.1).

- :mod:`.delta`: what a fine-tuned network changed (per module, per output
  channel) and random sparse fine-tuned networks of the seed's three patterns;
- :mod:`.engine`: :class:`DifferentialEngine`, the fine-tuned networks' logits
  from the base network's shared work, equal to the dense networks' logits up to
  float32 rounding and with identical argmaxes (near-tie guard);
- :mod:`.certify`: smoothing counts and certificates for T networks from one
  noise draw, and base traces that let later networks reuse a base
  certification's work.
"""

from abcrown_plugins.differential.certify import (BaseTrace, certify_from_traces, multitask_certify,
                                                  multitask_counts, record_certify_traces, record_trace,
                                                  trace_counts)
from abcrown_plugins.differential.delta import (ALLOCATIONS, PATTERNS, Change, calibrate_batchnorm,
                                                center_classifier, module_changes, random_finetuned)
from abcrown_plugins.differential.engine import (BREAK_EVEN, LIVE_OVERHEAD, TIE_TOL, DifferentialEngine,
                                                 EngineStats, TaskPlan)

__all__ = ["ALLOCATIONS", "PATTERNS", "Change", "calibrate_batchnorm", "center_classifier", "module_changes",
           "random_finetuned", "BREAK_EVEN", "LIVE_OVERHEAD", "TIE_TOL", "DifferentialEngine", "EngineStats",
           "TaskPlan", "BaseTrace", "certify_from_traces", "multitask_certify", "multitask_counts",
           "record_certify_traces", "record_trace", "trace_counts"]
