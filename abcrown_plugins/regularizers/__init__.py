"""Regularisers: loss terms and post-backward penalties that never own the training loop.

* :class:`StabilityTerm` (``rs``, ``nrs``): ``term(model, x, eps, bounds=None) -> Tensor``,
  a scalar added to the training loss (seed 001 eq. 4-5);
* :class:`BatchNormL1` (``slim``): ``after_backward(model)`` adds the L1 subgradient on
  BatchNorm gamma to ``.grad`` (Network Slimming);
* :class:`WarmupTerm` (``warmup``): bound tightness + ReLU balance during the IBP radius ramp
  (Shi et al. 2021), decaying to 0 at the target radius.
"""

from abcrown_plugins.regularizers.registry import REGULARIZERS, make_regularizer
from abcrown_plugins.regularizers.slimming import BatchNormL1
from abcrown_plugins.regularizers.stability import StabilityTerm, nrs_loss, rs_loss
from abcrown_plugins.regularizers.warmup import WarmupTerm, tightness_and_balance

__all__ = ["REGULARIZERS", "BatchNormL1", "StabilityTerm", "WarmupTerm", "make_regularizer", "nrs_loss", "rs_loss", "tightness_and_balance"]
