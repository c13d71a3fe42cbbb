"""Importance criteria: ``criterion(model, mask, ctx) -> {name: scores}``, higher = more important.

Weight criteria score every entry of every mask tensor (same shapes as the mask);
channel criteria score the output channels of every prunable conv
(``{conv name: (out_channels,)}``). A criterion never changes ``model``: data-driven
ones work on a copy. Scores of already-pruned entries are ignored by the strategies.

* ``magnitude``: ``|w|`` (IMP, Frankle & Carbin 2019);
* ``random``: uniform noise from a generator seeded by (seed, round);
* ``snip``: ``|dL/dw * w|`` at the rewind point (the masked initial weights, SNIP's
  connection sensitivity, Lee et al. 2019), ``L`` the training objective, summed over
  ``ctx.saliency_batches`` batches;
* ``taylor``: first-order Taylor saliency ``(dL/dw * w)^2`` at the trained weights,
  averaged over batches (Molchanov et al. 2019);
* ``hydra``: scores learned to minimise the training objective (see :mod:`.hydra`);
* ``channel_magnitude``: a filter's total ``|w|`` over the weights that one round of IMP
  keeps, divided by the mean of that total over the layer's kept filters (so layers of
  different scale compare; StructLTH);
* ``bn_gamma``: ``|gamma|`` of the BatchNorm after the conv (Network Slimming).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from abcrown_plugins.errors import UserError
from abcrown_plugins.pruning.channels import bn_of, prunable_channels
from abcrown_plugins.pruning.context import PruneContext
from abcrown_plugins.pruning.hydra import hydra_scores
from abcrown_plugins.pruning.mask import Mask
from abcrown_plugins.pruning.strategies import prune_unstructured


@dataclass(frozen=True)
class Criterion:
    name: str
    fn: Callable[[nn.Module, Mask, PruneContext], dict[str, Tensor]]
    description: str
    unit: str  # "weight" or "channel"


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, description: str, unit: str = "weight"):
    def wrap(fn):
        if name in CRITERIA:
            raise ValueError(f"criterion '{name}' is registered twice")
        CRITERIA[name] = Criterion(name, fn, description, unit)
        return fn
    return wrap


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise UserError(f"unknown importance criterion '{name}' (valid: {', '.join(CRITERIA)})")
    return CRITERIA[name]


@register_criterion("magnitude", "weight magnitude |w|")
@torch.no_grad()
def magnitude_scores(model: nn.Module, mask: Mask, ctx: PruneContext) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    return {k: params[k].detach().abs().cpu() for k in mask}


@register_criterion("random", "uniform random scores (sanity baseline)")
def random_scores(model: nn.Module, mask: Mask, ctx: PruneContext) -> dict[str, Tensor]:
    g = ctx.generator(salt=11)
    return {k: torch.rand(mask[k].shape, generator=g) for k in mask}


def _gradients(work: nn.Module, mask: Mask, ctx: PruneContext, salt: int) -> list[dict[str, Tensor]]:
    """Per-batch gradients of the objective w.r.t. the masked parameters of ``work``."""
    params = dict(work.named_parameters())
    out = []
    work.train()
    for x, y in ctx.batches(ctx.saliency_batches, salt=salt):
        work.zero_grad(set_to_none=True)
        loss = ctx.objective(work, x, y)
        grads = torch.autograd.grad(loss, [params[k] for k in mask], allow_unused=True)
        out.append({k: (g if g is not None else torch.zeros_like(params[k])).detach().cpu()
                    for k, g in zip(mask, grads)})
    return out


@register_criterion("snip", "connection sensitivity |dL/dw * w| at the rewind point (SNIP)")
def snip_scores(model: nn.Module, mask: Mask, ctx: PruneContext) -> dict[str, Tensor]:
    work = copy.deepcopy(model).to(ctx.device)
    if ctx.init_state is not None:
        work.load_state_dict(ctx.init_state)
    mask.apply_(work)
    params = dict(work.named_parameters())
    grads = _gradients(work, mask, ctx, salt=21)
    return {k: sum(g[k] for g in grads).mul(params[k].detach().cpu()).abs() for k in mask}


@register_criterion("taylor", "first-order Taylor saliency (dL/dw * w)^2 at the trained weights")
def taylor_scores(model: nn.Module, mask: Mask, ctx: PruneContext) -> dict[str, Tensor]:
    work = copy.deepcopy(model).to(ctx.device)
    params = dict(work.named_parameters())
    grads = _gradients(work, mask, ctx, salt=31)
    return {k: sum((g[k] * params[k].detach().cpu()).square() for g in grads) / max(len(grads), 1) for k in mask}


@register_criterion("hydra", "scores optimised on the training objective with a top-k mask (HYDRA)")
def hydra_scores_criterion(model: nn.Module, mask: Mask, ctx: PruneContext) -> dict[str, Tensor]:
    return hydra_scores(model, mask, ctx)


def _conv_weight_keys(model: nn.Module) -> dict[str, str]:
    return {c: f"{c}.weight" for c in prunable_channels(model)}


@register_criterion("channel_magnitude", "filter L1 norm over the weights IMP keeps, relative to its layer "
                    "(StructLTH)", unit="channel")
@torch.no_grad()
def channel_magnitude_scores(model: nn.Module, mask: Mask, ctx: PruneContext) -> dict[str, Tensor]:
    keys = _conv_weight_keys(model)
    params = dict(model.named_parameters())
    conv_mask = Mask({w: mask[w] if w in list(mask) else torch.ones_like(params[w], dtype=torch.bool)
                      for w in keys.values()})
    imp = prune_unstructured({w: params[w].detach().abs() for w in keys.values()}, conv_mask, ctx.rate,
                             ctx.strategy)
    out = {}
    for conv, w in keys.items():
        total = (params[w].detach().abs().cpu() * imp[w]).flatten(1).sum(1).double()
        alive = conv_mask[w].flatten(1).any(1)
        mean = total[alive].mean() if bool(alive.any()) else torch.tensor(1.0, dtype=torch.float64)
        out[conv] = total / mean.clamp_min(1e-30)
    return out


@register_criterion("bn_gamma", "|gamma| of the BatchNorm after the conv (Network Slimming)", unit="channel")
@torch.no_grad()
def bn_gamma_scores(model: nn.Module, mask: Mask, ctx: PruneContext) -> dict[str, Tensor]:
    bns = bn_of(model)
    lacking = [c for c in prunable_channels(model) if c not in bns]
    if lacking:
        raise UserError(f"bn_gamma ranks channels by their BatchNorm's gamma, but conv '{lacking[0]}' has no "
                        "BatchNorm after it (exported networks often fold it into the conv); rank by filter "
                        "magnitude instead (pruning.method struct_lth)")
    return {c: bn.weight.detach().abs().cpu().double() for c, bn in bns.items()}
