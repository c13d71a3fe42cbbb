"""Sparse transfer learning (seed 000): DiffPruning masks, RigL, DiffStab, the synthetic multi-attribute scenario.

The methods only; the experiment that runs them (pretrain, fine-tune per task,
certify) is :mod:`abcrown_plugins.experiments.transfer`.
"""

from abcrown_plugins.transfer.diffstab import diffstab_loss
from abcrown_plugins.transfer.masks import (
    PATTERNS,
    UnitLayout,
    build_mask,
    classifier_names,
    layer_order,
    mask_count,
    prefix_mac_fraction,
    select_units,
    unit_layout,
    verification_aware_prefix,
)
from abcrown_plugins.transfer.rigl import drop_fraction_at, rigl_update
from abcrown_plugins.transfer.scenario import (
    SCENARIO,
    MultiAttributeSet,
    attribute_task,
    dataset_for_checkpoint,
    pretrain_set,
)

__all__ = ["PATTERNS", "SCENARIO", "MultiAttributeSet", "UnitLayout", "attribute_task", "build_mask",
           "classifier_names", "dataset_for_checkpoint", "diffstab_loss", "drop_fraction_at", "layer_order",
           "mask_count", "prefix_mac_fraction", "pretrain_set", "rigl_update", "select_units", "unit_layout",
           "verification_aware_prefix"]
