"""Channel (neuron) masks: which output channels of which convolutions are kept.

A :data:`ChannelMask` maps a conv module name (as in ``model.named_modules()``,
e.g. ``"1"`` or ``"5.conv2"``) to a bool tensor of shape ``(out_channels,)``,
True = kept. It is the structured counterpart of :class:`Mask`: it is applied
to a model by :func:`channel_to_weight_mask` (zero whole filters, their biases and
the BatchNorm affine parameters of pruned channels, so a pruned channel's
output, after its BatchNorm when it has one, is exactly 0 and the ReLU passes 0) and removed physically by
:func:`abcrown_plugins.pruning.compaction.compact`.

Which channels can be pruned, and which convs are coupled, is read off the
model's traced graph by :func:`channel_graph`
(:func:`abcrown_plugins.pruning.coupling.read_channel_graph`, one rule per
operation kind), for any network: the zoo's, an ``fx.GraphModule`` from the
ONNX importer, or the user's own ``nn.Module``; no example input is needed.

* a conv is prunable (with the affine BatchNorm2d that directly follows it, if any) when
  everything that reads its channels is known (convs, the Linear after a flatten, residual adds,
  concatenations, pooling, zero-preserving activations); the classifier never is;
* residual adds couple channels: the convs whose outputs meet in an add (through
  their BatchNorms, ReLUs, pooling) form a *group* and must share one mask; an identity
  shortcut ties a block's output to whatever produced its input; a depthwise conv joins the
  group of the conv feeding it;
* anything that maps a zero channel to a non-zero one or mixes channels (a BatchNorm not
  directly after a conv, sigmoid, a residual add onto the network input, a grouped conv that
  is not depthwise, a reshape that is not a flatten) makes the affected convs unprunable; an
  operation with no rule at all that reads prunable channels is a UserError naming it and
  its node.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from abcrown_plugins.errors import UserError
from abcrown_plugins.pruning.coupling import ChannelGraph, Consumer, read_channel_graph
from abcrown_plugins.pruning.mask import Mask
from abcrown_plugins.pruning.strategies import remove_lowest

__all__ = ["ChannelGraph", "ChannelMask", "Consumer", "bn_of", "channel_density", "channel_graph",
           "channel_groups", "channel_to_weight_mask", "ones_channel_mask", "prunable_channels",
           "prune_channels_by_score", "random_channel_mask", "validate_channel_mask"]

ChannelMask = dict[str, Tensor]
"""conv module name -> bool tensor (out_channels,), True = kept."""


def channel_graph(model: nn.Module) -> ChannelGraph:
    """Read the channel structure of ``model`` (see the module docstring).

    Raises UserError when ``model`` cannot be traced with ``torch.fx``, or when an
    operation without a rule reads a conv's prunable channels (naming the operation and node).
    """
    return read_channel_graph(model)


def _convs(model: nn.Module, graph: ChannelGraph) -> dict[str, nn.Conv2d]:
    kept = {c for g in graph.groups for c in g}
    return {name: m for name, m in model.named_modules() if name in kept}


def prunable_channels(model: nn.Module) -> dict[str, nn.Conv2d]:
    """``{name: conv}`` of the convs whose output channels may be pruned, in module order.

    Each is followed directly by a BatchNorm2d; the last conv before Flatten is
    included; the classifier (a Linear) never is.
    """
    return _convs(model, channel_graph(model))


def channel_groups(model: nn.Module) -> list[list[str]]:
    """Coupled prunable convs that must share one mask (residual adds); singletons for the rest.

    Every key of :func:`prunable_channels` is in exactly one group.
    """
    return [list(g) for g in channel_graph(model).groups]


def bn_of(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """Prunable conv name -> the BatchNorm2d that directly follows it (convs without one are left out)."""
    modules = dict(model.named_modules())
    return {c: modules[b] for c, b in channel_graph(model).bn.items()}


def ones_channel_mask(model: nn.Module) -> ChannelMask:
    """Every channel of every prunable conv kept."""
    return {c: torch.ones(m.out_channels, dtype=torch.bool, device=m.weight.device)
            for c, m in prunable_channels(model).items()}


def validate_channel_mask(model: nn.Module, cmask: Mapping[str, Tensor], graph: ChannelGraph | None = None) -> None:
    """Raise ValueError (naming the key) unless ``cmask`` is a valid channel mask of ``model``.

    Valid: exactly the keys of :func:`prunable_channels`; bool tensors of shape
    ``(out_channels,)``; coupled convs with equal masks; at least one channel
    kept per conv. ``graph``: ``channel_graph(model)`` when the caller already has it.
    """
    _validate(model, graph if graph is not None else channel_graph(model), cmask)


def _validate(model: nn.Module, graph: ChannelGraph, cmask: Mapping[str, Tensor]) -> dict[str, nn.Conv2d]:
    """:func:`validate_channel_mask` against an already read ``graph``; returns the prunable convs."""
    convs = _convs(model, graph)
    for k in cmask:
        if k not in convs:
            raise ValueError(f"channel mask key '{k}' is not a prunable conv of the model "
                             f"(prunable: {', '.join(convs) or 'none'})")
    for k, conv in convs.items():
        if k not in cmask:
            raise ValueError(f"channel mask lacks the prunable conv '{k}'")
        v = cmask[k]
        if not isinstance(v, Tensor) or v.dtype != torch.bool:
            raise ValueError(f"channel mask '{k}' must be a bool tensor, got "
                             f"{v.dtype if isinstance(v, Tensor) else type(v).__name__}")
        if tuple(v.shape) != (conv.out_channels,):
            raise ValueError(f"channel mask '{k}' has shape {tuple(v.shape)}, the conv has "
                             f"({conv.out_channels},) output channels")
        if not bool(v.any()):
            raise ValueError(f"channel mask '{k}' keeps no channel; at least one must stay")
    for g in graph.groups:
        for k in g[1:]:
            if not torch.equal(cmask[k].cpu(), cmask[g[0]].cpu()):
                raise ValueError(f"channel mask '{k}' differs from '{g[0]}'; coupled convs "
                                 f"({', '.join(g)}) must share one mask")
    return convs


def channel_to_weight_mask(model: nn.Module, cmask: Mapping[str, Tensor], base: Mask | None = None) -> Mask:
    """The weight :class:`Mask` that realises ``cmask`` on ``model``.

    For every pruned channel ``c`` of conv ``k``: ``k.weight[c]`` (the whole
    filter), ``k.bias[c]`` (if any), and its BatchNorm's ``weight[c]`` and
    ``bias[c]`` are False; everything else in those tensors is True. Applied
    with :meth:`Mask.apply_`, the BatchNorm output of a pruned channel is
    exactly 0 (eval or train mode). With ``base``: the result is ``base AND``
    the channel mask on ``base``'s keys, plus the channel mask's other keys.
    """
    graph = channel_graph(model)
    _validate(model, graph, cmask)
    modules = dict(model.named_modules())
    out: dict[str, Tensor] = {}
    for k, keep in cmask.items():
        conv, bn = modules[k], modules.get(graph.bn.get(k))
        keep = keep.to(torch.bool)
        w = keep.to(conv.weight.device).view(-1, 1, 1, 1).expand_as(conv.weight)
        out[f"{k}.weight"] = w.clone()
        if conv.bias is not None:
            out[f"{k}.bias"] = keep.to(conv.bias.device).clone()
        for p in ("weight", "bias") if bn is not None else ():
            t = getattr(bn, p)
            if t is not None:
                out[f"{graph.bn[k]}.{p}"] = keep.to(t.device).clone()
    if base is not None:
        merged = base.to_dict()
        for key, v in out.items():
            merged[key] = merged[key] & v.to(merged[key].device) if key in merged else v
        out = merged
    return Mask(out)


def channel_density(cmask: Mapping[str, Tensor]) -> float:
    """Kept / all channels, counted over every conv of the mask (coupled convs each count)."""
    total = sum(v.numel() for v in cmask.values())
    return sum(int(v.sum()) for v in cmask.values()) / max(total, 1)


@torch.no_grad()
def prune_channels_by_score(model: nn.Module, cmask: Mapping[str, Tensor], scores: Mapping[str, Tensor],
                            rate: float, strategy: str = "global") -> ChannelMask:
    """Remove ``round(rate * kept)`` of the still-kept channels with the lowest score.

    ``strategy``: ``global`` ranks the channel units of all groups together;
    ``layerwise`` removes ``round(rate * kept_group)`` in every group (uniform width
    reduction, e.g. every conv keeps half its channels at rate 0.5).

    The unit of pruning is a *channel unit*: one channel index of one coupled
    group (a singleton group's unit is one channel of one conv). A group's unit
    is scored by the sum of its members' scores and removed from all members
    together; ``kept`` counts kept units. Ties are broken by position. The
    result is a subset of ``cmask`` and never empties a conv: each group keeps
    its best-scored channel, so when ``round(rate * kept)`` exceeds the removable
    units, only those are removed. For models whose groups are all singletons
    (cnn_7layer, cnn_small) the achieved channel density is exact.

    ``scores``: prunable conv name -> float tensor (out_channels,); higher = more
    important. Raises ValueError for a bad rate, mask or score entry.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"channel pruning rate must be in [0, 1), got {rate}")
    if strategy not in ("global", "layerwise"):
        raise UserError(f"unknown channel pruning strategy '{strategy}' (valid: global, layerwise)")
    graph = channel_graph(model)
    convs = _validate(model, graph, cmask)
    for k in convs:
        if k not in scores:
            raise ValueError(f"scores lack the prunable conv '{k}'")
        s = scores[k]
        if tuple(s.shape) != (convs[k].out_channels,):
            raise ValueError(f"scores '{k}' have shape {tuple(s.shape)}, expected ({convs[k].out_channels},)")
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"scores '{k}' contain NaN or infinite values")
    groups = graph.groups
    keep = [cmask[g[0]].detach().cpu().clone() for g in groups]
    unit_scores = []
    for g, kp in zip(groups, keep):
        s = sum(scores[k].detach().double().cpu() for k in g)
        s = torch.where(kp, s, torch.full_like(s, float("inf")))
        s[int(torch.argmax(torch.where(kp, s, torch.full_like(s, -float("inf")))))] = float("inf")  # never empty
        unit_scores.append(s)
    if strategy == "global":
        new_keep = _remove_fraction(torch.cat(unit_scores), torch.cat(keep), rate)
    else:
        new_keep = torch.cat([_remove_fraction(us, kp, rate) for us, kp in zip(unit_scores, keep)])
    out: ChannelMask = {}
    offset = 0
    for g, kp in zip(groups, keep):
        part = new_keep[offset:offset + kp.numel()]
        offset += kp.numel()
        for k in g:
            out[k] = part.clone().to(cmask[k].device)
    return {k: out[k] for k in convs}


def _remove_fraction(unit_scores: Tensor, keep: Tensor, rate: float) -> Tensor:
    """``keep`` minus ``round(rate * kept)`` units of lowest score (infinite scores are never removed)."""
    return remove_lowest(unit_scores, keep, int(round(rate * int(keep.sum()))))


def random_channel_mask(model: nn.Module, keep: float, generator: torch.Generator | None = None) -> ChannelMask:
    """A random valid channel mask keeping ``max(1, round(keep * n))`` channels of every group.

    For tests and benchmarks (compaction speed at a given width); coupled convs
    share their mask.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep ratio must be in (0, 1], got {keep}")
    graph = channel_graph(model)
    convs = _convs(model, graph)
    out: ChannelMask = {}
    for g in graph.groups:
        n = convs[g[0]].out_channels
        k = max(1, int(round(keep * n)))
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.randperm(n, generator=generator)[:k]] = True
        for name in g:
            out[name] = m.clone().to(convs[name].weight.device)
    return {k: out[k] for k in convs}
