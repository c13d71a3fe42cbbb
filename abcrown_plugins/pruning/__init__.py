"""Pruning: masks (mechanism), importance criteria, strategies, methods and the pure step ``prune``.

``prune(method, model, mask, ctx) -> Mask`` (:mod:`.methods`) composes a criterion
(:mod:`.importance`) and a strategy (:mod:`.strategies`); :data:`METHODS` lists the
methods of seed 001 with one-line descriptions. Channel structure lives in
:mod:`.channels`, physical removal of pruned channels in :mod:`.compaction`.
"""

from abcrown_plugins.pruning.context import PruneContext
from abcrown_plugins.pruning.importance import CRITERIA, get_criterion
from abcrown_plugins.pruning.magnitude import prune_global_magnitude
from abcrown_plugins.pruning.mask import SCOPES, Mask, prunable_parameters, rewind_
from abcrown_plugins.pruning.methods import (
    ALIASES,
    METHODS,
    PruningMethod,
    channel_mask_of,
    get_method,
    initial_mask,
    prune,
)
from abcrown_plugins.pruning.strategies import STRATEGIES, prune_unstructured

__all__ = ["ALIASES", "CRITERIA", "METHODS", "Mask", "PruneContext", "PruningMethod", "SCOPES", "STRATEGIES",
           "channel_mask_of", "get_criterion", "get_method", "initial_mask", "prunable_parameters", "prune",
           "prune_global_magnitude", "prune_unstructured", "rewind_"]
