"""Pruning: masks (mechanism) and pruning steps (criteria)."""

from abcrown_plugins.pruning.magnitude import prune_global_magnitude
from abcrown_plugins.pruning.mask import SCOPES, Mask, prunable_parameters, rewind_

__all__ = ["Mask", "SCOPES", "prunable_parameters", "prune_global_magnitude", "rewind_"]
