"""Bound propagation: built-in IBP, stability measures, and the optional auto_LiRPA adapter."""

from abcrown_plugins.bounds.ibp import (
    CleanBatchStats,
    IBPResult,
    ReluBounds,
    batch_stats,
    input_box,
    interval_propagate,
    margin_lower_bounds,
    margin_spec,
)
from abcrown_plugins.bounds.lirpa import LirpaBounder, lirpa_available, lirpa_bounds
from abcrown_plugins.bounds.stability import Stability, pre_activation_stability, pre_bn_stability

__all__ = ["CleanBatchStats", "IBPResult", "LirpaBounder", "ReluBounds", "Stability", "batch_stats", "input_box", "interval_propagate",
           "lirpa_available", "lirpa_bounds", "margin_lower_bounds", "margin_spec", "pre_activation_stability",
           "pre_bn_stability"]
