"""Channel (neuron) masks: which output channels of which convolutions are kept.

A :data:`ChannelMask` maps a conv module name (as in ``model.named_modules()``,
e.g. ``"1"`` or ``"5.conv2"``) to a bool tensor of shape ``(out_channels,)``,
True = kept. It is the structured counterpart of :class:`Mask`: it is applied
to a model by :func:`channel_to_weight_mask` (zero whole filters and the
BatchNorm affine parameters of pruned channels, so a pruned channel's BatchNorm
output is exactly 0 and the ReLU passes 0) and removed physically by
:func:`abcrown_plugins.pruning.compaction.compact`.

Which channels can be pruned is read off the model's structure by
:func:`channel_graph`, a conservative walk over the zoo's layer kinds
(``nn.Sequential``, Conv2d, BatchNorm2d, zero-preserving activations and
pooling, Flatten, Linear, :class:`model_zoo.BasicBlock`):

* a conv is prunable when an affine BatchNorm2d follows it directly and everything that
  reads its output is known (a next conv, the Linear after Flatten, a residual
  add); the last conv before Flatten is included; the classifier never is;
* residual adds couple channels: a BasicBlock's output channels are shared by
  ``conv2`` and the shortcut conv, or, for an identity shortcut, by ``conv2``
  and whatever produced the block's input (so the block input's channels are
  pruned too). Coupled convs form a *group* and must share one mask;
* anything the walk does not know (another module type, a BatchNorm that does
  not directly follow a conv, a residual add onto the network input) makes the
  affected convs unprunable rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor, nn

from abcrown_plugins.errors import UserError
from abcrown_plugins.pruning.mask import Mask
from abcrown_plugins.pruning.strategies import remove_lowest
from model_zoo.layers import BasicBlock, Normalize

ChannelMask = dict[str, Tensor]
"""conv module name -> bool tensor (out_channels,), True = kept."""

# Layers that act per channel and map an all-zero channel to an all-zero channel.
_ZERO_PRESERVING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Hardtanh, nn.Identity, nn.Dropout,
                    nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)
_POOLING = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)
_INPUT = "<input>"  # pseudo-producer of the network input's channels (never prunable)


@dataclass(frozen=True)
class Consumer:
    """A layer reading a group's channels: a conv (input channels) or the Linear after Flatten.

    For a Linear, channel ``c`` occupies input features ``c*hw .. (c+1)*hw - 1``.
    """

    name: str
    kind: str  # "conv" or "linear"
    hw: int = 1


@dataclass(frozen=True)
class ChannelGraph:
    """The channel structure of a model, as :func:`channel_graph` reads it.

    ``groups``: coupled prunable convs, members in module order; ``bn``: conv
    name -> name of its BatchNorm; ``consumers``: one entry per group (same
    order) listing the layers that read the group's channels.
    """

    groups: tuple[tuple[str, ...], ...]
    bn: dict[str, str]
    consumers: tuple[tuple[Consumer, ...], ...]
    blocked: frozenset[str] = field(default_factory=frozenset)  # convs seen but not prunable

    def group_of(self, conv: str) -> int:
        for i, g in enumerate(self.groups):
            if conv in g:
                return i
        raise KeyError(conv)


class _Walk:
    """Mutable state of the structure walk (see :func:`channel_graph`)."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.parent: dict[str, str] = {_INPUT: _INPUT}
        self.order: list[str] = []
        self.bn: dict[str, str] = {}
        self.blocked: set[str] = {_INPUT}
        self.consumers: list[tuple[str, Consumer]] = []
        # the current tensor: which conv's channels it carries (None: not a conv's), whether it is
        # flattened, and the conv directly before it (for BatchNorm attachment)
        self.src: str | None = _INPUT
        self.flat = False
        self.after_conv: str | None = None

    # union-find over conv names
    def find(self, a: str) -> str:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def block_src(self) -> None:
        if self.src is not None:
            self.blocked.add(self.src)
        self.src, self.flat, self.after_conv = None, False, None

    def walk(self, module: nn.Module, name: str) -> None:
        if isinstance(module, nn.Sequential):
            for child_name, child in module.named_children():
                self.walk(child, f"{name}.{child_name}" if name else child_name)
        elif isinstance(module, BasicBlock):
            self.block(module, name)
        elif isinstance(module, nn.Conv2d):
            self.conv(module, name)
        elif isinstance(module, nn.BatchNorm2d):
            if self.after_conv is not None and self.after_conv == self.src and not self.flat and module.affine:
                self.bn[self.after_conv] = name
                self.after_conv = None
            else:  # a BatchNorm maps a zero channel to a non-zero constant unless gamma = beta = 0 there
                self.block_src()
        elif isinstance(module, _ZERO_PRESERVING):
            if self.flat and isinstance(module, _POOLING):
                self.block_src()
            self.after_conv = None
        elif isinstance(module, nn.Flatten):
            if self.flat or module.start_dim != 1 or module.end_dim != -1:
                self.block_src()
            else:
                self.flat = self.src is not None
            self.after_conv = None
        elif isinstance(module, nn.Linear):
            if self.src is not None:
                conv = self.modules[self.src] if self.src != _INPUT else None
                if self.flat and conv is not None and module.in_features % conv.out_channels == 0:
                    self.consumers.append((self.src, Consumer(name, "linear", module.in_features // conv.out_channels)))
                else:
                    self.blocked.add(self.src)
            self.src, self.flat, self.after_conv = None, False, None
        else:  # Normalize after a conv, unknown layers: whatever they read stays unpruned
            if not isinstance(module, Normalize) or self.src != _INPUT:
                self.block_src()

    def conv(self, module: nn.Conv2d, name: str) -> None:
        if self.src is not None:
            if self.flat or module.groups != 1:
                self.blocked.add(self.src)
            else:
                self.consumers.append((self.src, Consumer(name, "conv")))
        self.parent[name] = name
        self.order.append(name)
        if module.groups != 1:
            self.blocked.add(name)
        self.src, self.flat, self.after_conv = name, False, name

    def block(self, block: BasicBlock, name: str) -> None:
        if self.flat:
            self.block_src()
        s_in = self.src
        for child in ("conv1", "bn1", "relu1", "conv2", "bn2"):
            self.walk(getattr(block, child), f"{name}.{child}")
        main = f"{name}.conv2"
        if self.src != main:  # bn2 was not attached to conv2
            self.blocked.add(main)
        self.src, self.flat, self.after_conv = s_in, False, None
        self.walk(block.shortcut, f"{name}.shortcut")
        if self.src is None:  # the shortcut's output channels are unknown
            self.blocked.add(main)
        else:
            self.union(main, self.src)
        self.src, self.flat, self.after_conv = main, False, None
        self.walk(block.relu2, f"{name}.relu2")


def channel_graph(model: nn.Module) -> ChannelGraph:
    """Read the channel structure of ``model`` (see the module docstring)."""
    modules = dict(model.named_modules())
    w = _Walk(modules)
    w.walk(model, "")
    if w.src is not None:  # the output carries a conv's channels: they are the logits
        w.blocked.add(w.src)
    w.blocked |= {c for c in w.order if c not in w.bn}
    bad_roots = {w.find(c) for c in w.blocked}
    roots: dict[str, list[str]] = {}
    for c in w.order:
        r = w.find(c)
        if r not in bad_roots:
            roots.setdefault(r, []).append(c)
    groups = tuple(tuple(g) for g in roots.values())
    index = {r: i for i, r in enumerate(roots)}
    consumers: list[list[Consumer]] = [[] for _ in groups]
    for src, cons in w.consumers:
        r = w.find(src)
        if r in index:
            consumers[index[r]].append(cons)
    kept = {c for g in groups for c in g}
    return ChannelGraph(groups=groups, bn={c: b for c, b in w.bn.items() if c in kept},
                        consumers=tuple(tuple(c) for c in consumers),
                        blocked=frozenset(c for c in w.order if c not in kept))


def prunable_channels(model: nn.Module) -> dict[str, nn.Conv2d]:
    """``{name: conv}`` of the convs whose output channels may be pruned, in module order.

    Each is followed directly by a BatchNorm2d; the last conv before Flatten is
    included; the classifier (a Linear) never is.
    """
    modules = dict(model.named_modules())
    kept = {c for g in channel_graph(model).groups for c in g}
    return {name: m for name, m in modules.items() if name in kept}


def channel_groups(model: nn.Module) -> list[list[str]]:
    """Coupled prunable convs that must share one mask (residual adds); singletons for the rest.

    Every key of :func:`prunable_channels` is in exactly one group.
    """
    return [list(g) for g in channel_graph(model).groups]


def bn_of(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """Prunable conv name -> the BatchNorm2d that directly follows it."""
    modules = dict(model.named_modules())
    return {c: modules[b] for c, b in channel_graph(model).bn.items()}


def ones_channel_mask(model: nn.Module) -> ChannelMask:
    """Every channel of every prunable conv kept."""
    return {c: torch.ones(m.out_channels, dtype=torch.bool, device=m.weight.device)
            for c, m in prunable_channels(model).items()}


def validate_channel_mask(model: nn.Module, cmask: Mapping[str, Tensor]) -> None:
    """Raise ValueError (naming the key) unless ``cmask`` is a valid channel mask of ``model``.

    Valid: exactly the keys of :func:`prunable_channels`; bool tensors of shape
    ``(out_channels,)``; coupled convs with equal masks; at least one channel
    kept per conv.
    """
    convs = prunable_channels(model)
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
    for g in channel_groups(model):
        for k in g[1:]:
            if not torch.equal(cmask[k].cpu(), cmask[g[0]].cpu()):
                raise ValueError(f"channel mask '{k}' differs from '{g[0]}'; coupled convs "
                                 f"({', '.join(g)}) must share one mask")


def channel_to_weight_mask(model: nn.Module, cmask: Mapping[str, Tensor], base: Mask | None = None) -> Mask:
    """The weight :class:`Mask` that realises ``cmask`` on ``model``.

    For every pruned channel ``c`` of conv ``k``: ``k.weight[c]`` (the whole
    filter), ``k.bias[c]`` (if any), and its BatchNorm's ``weight[c]`` and
    ``bias[c]`` are False; everything else in those tensors is True. Applied
    with :meth:`Mask.apply_`, the BatchNorm output of a pruned channel is
    exactly 0 (eval or train mode). With ``base``: the result is ``base AND``
    the channel mask on ``base``'s keys, plus the channel mask's other keys.
    """
    validate_channel_mask(model, cmask)
    modules = dict(model.named_modules())
    graph = channel_graph(model)
    out: dict[str, Tensor] = {}
    for k, keep in cmask.items():
        conv, bn = modules[k], modules[graph.bn[k]]
        keep = keep.to(torch.bool)
        w = keep.to(conv.weight.device).view(-1, 1, 1, 1).expand_as(conv.weight)
        out[f"{k}.weight"] = w.clone()
        if conv.bias is not None:
            out[f"{k}.bias"] = keep.to(conv.bias.device).clone()
        for p in ("weight", "bias"):
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
    validate_channel_mask(model, cmask)
    convs = prunable_channels(model)
    for k in convs:
        if k not in scores:
            raise ValueError(f"scores lack the prunable conv '{k}'")
        s = scores[k]
        if tuple(s.shape) != (convs[k].out_channels,):
            raise ValueError(f"scores '{k}' have shape {tuple(s.shape)}, expected ({convs[k].out_channels},)")
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"scores '{k}' contain NaN or infinite values")
    groups = channel_groups(model)
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
    convs = prunable_channels(model)
    out: ChannelMask = {}
    for g in channel_groups(model):
        n = convs[g[0]].out_channels
        k = max(1, int(round(keep * n)))
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.randperm(n, generator=generator)[:k]] = True
        for name in g:
            out[name] = m.clone().to(convs[name].weight.device)
    return {k: out[k] for k in convs}
