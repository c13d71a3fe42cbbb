"""Pruning methods of seed 001: criterion + strategy + regulariser, and the pure step ``prune``.

A :class:`PruningMethod` composes an importance criterion (:mod:`.importance`), a
structure (single weights or whole channels) with its strategy (:mod:`.strategies`), and
the regulariser it trains with (:mod:`abcrown_plugins.regularizers`). The schedule
(iterations, rates, rewinding) is the experiment's (:mod:`abcrown_plugins.experiments.pruning`).

``prune(method, model, mask, ctx) -> Mask`` is a pure function: it never changes
``model`` and returns a subset of ``mask``; its random numbers come from ``(ctx.seed,
ctx.round)`` only (:meth:`PruneContext.seeded_global_rng`), so a killed run that prunes a
round again gets the same mask. Unstructured methods remove exactly
``round(ctx.rate * kept)`` weights (global) or that per layer (layerwise); channel
methods remove ``round(ctx.channel_rate * kept channels)`` channels and return the
weight mask that zeroes their filters, biases and BatchNorm entries.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from abcrown_plugins.errors import UserError
from abcrown_plugins.pruning.channels import (
    channel_to_weight_mask,
    ones_channel_mask,
    prunable_channels,
    prune_channels_by_score,
)
from abcrown_plugins.pruning.context import PruneContext
from abcrown_plugins.pruning.importance import get_criterion
from abcrown_plugins.pruning.mask import Mask
from abcrown_plugins.pruning.strategies import prune_unstructured


@dataclass(frozen=True)
class PruningMethod:
    name: str
    description: str
    criterion: str                 # key of importance.CRITERIA
    structure: str                 # "weights" or "channels"
    regularizer: str | None = None  # key of regularizers.REGULARIZERS trained with, if any


METHODS: dict[str, PruningMethod] = {}
ALIASES = {"magnitude": "imp"}


def _register(*args, **kwargs) -> None:
    m = PruningMethod(*args, **kwargs)
    if m.name in METHODS:
        raise ValueError(f"pruning method '{m.name}' is registered twice")
    METHODS[m.name] = m


_register("random", "random unstructured pruning (sanity baseline)", "random", "weights")
_register("imp", "iterative magnitude pruning, lottery-ticket style (Frankle & Carbin 2019)", "magnitude", "weights")
_register("snip", "SNIP: connection sensitivity |dL/dw * w| at the rewind point (Lee et al. 2019)", "snip", "weights")
_register("taylor", "first-order Taylor saliency (dL/dw * w)^2 of the trained weights (Molchanov et al. 2019)",
          "taylor", "weights")
_register("hydra", "HYDRA: scores learned on the training objective (adversarial or certified), top-k mask "
          "(Sehwag et al. 2020)", "hydra", "weights")
_register("imp_rs", "train with RSLoss -tanh(1+l*u), prune by magnitude (Xiao et al. 2019)", "magnitude", "weights",
          "rs")
_register("imp_nrs", "train with NRSLoss -tanh(1+l*u/gamma^2), prune by magnitude (seed 001)", "magnitude",
          "weights", "nrs")
_register("hydra_nrs", "train with NRSLoss, prune by HYDRA scores (seed 001)", "hydra", "weights", "nrs")
_register("struct_lth", "StructLTH: IMP, rank channels by remaining magnitude, prune channels, refill kept "
          "channels (Chen et al. 2022)", "channel_magnitude", "channels")
_register("slim", "Network Slimming: L1 on BatchNorm gamma, prune channels with the smallest |gamma| "
          "(Liu et al. 2017)", "bn_gamma", "channels", "bn_l1")


def get_method(name: str) -> PruningMethod:
    """The method called ``name`` (or an alias); a bad name lists the valid ones."""
    key = ALIASES.get(name, name)
    if key not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS) + list(ALIASES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown pruning method '{name}'{hint} (valid: {', '.join(METHODS)}; "
                        f"aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())})")
    return METHODS[key]


def channel_mask_of(model: nn.Module, mask: Mask) -> dict[str, Tensor]:
    """The channel mask a channel method's weight mask realises: a filter is kept iff any entry is."""
    keys = set(mask)
    out = {}
    for c, conv in prunable_channels(model).items():
        w = f"{c}.weight"
        out[c] = (mask[w].flatten(1).any(1).cpu() if w in keys
                  else torch.ones(conv.out_channels, dtype=torch.bool))
    return out


def initial_mask(method: str | PruningMethod, model: nn.Module, scope: str = "conv") -> Mask:
    """The all-kept mask of a method: prunable weights, or the channel entries of every prunable conv."""
    m = get_method(method) if isinstance(method, str) else method
    if m.structure == "channels":
        if not ones_channel_mask(model):
            raise UserError(f"pruning method '{m.name}' prunes channels but the model has no prunable conv "
                            "(a conv followed directly by a BatchNorm)")
        return channel_to_weight_mask(model, ones_channel_mask(model))
    return Mask.ones_like(model, scope)


def method_scores(method: str | PruningMethod, model: nn.Module, mask: Mask, ctx: PruneContext) -> dict[str, Tensor]:
    """The importance scores ``method``'s criterion gives, with torch's global generator seeded from
    ``(ctx.seed, ctx.round)`` for the call (objectives with random starts draw from it)."""
    m = get_method(method) if isinstance(method, str) else method
    with ctx.seeded_global_rng(salt=51):
        return get_criterion(m.criterion).fn(model, mask, ctx)


def prune(method: str | PruningMethod, model: nn.Module, mask: Mask, ctx: PruneContext) -> Mask:
    """One pruning step of ``method``: a subset of ``mask``; ``model`` is not changed."""
    m = get_method(method) if isinstance(method, str) else method
    mask.validate(model)
    scores = method_scores(m, model, mask, ctx)
    if m.structure == "weights":
        return prune_unstructured(scores, mask, ctx.rate, ctx.strategy)
    cmask = channel_mask_of(model, mask)
    new_cmask = prune_channels_by_score(model, cmask, scores, ctx.channel_rate, ctx.strategy)
    # refill: every weight of a kept channel is kept again (StructLTH); for slim this is the same mask
    new = channel_to_weight_mask(model, new_cmask)
    if set(new) != set(mask):
        raise ValueError("channel pruning changed the mask's keys; start from initial_mask(method, model)")
    return new
