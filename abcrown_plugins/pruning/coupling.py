"""Which conv output channels are coupled, read off a ``torch.fx`` graph with one rule per operation.

:func:`read_channel_graph` traces a model once (an ``fx.GraphModule``, e.g. from
:func:`abcrown_plugins.graph.import_onnx`, is read as it is; any other
``nn.Module`` is traced with ``torch.fx``; no example input is needed) and walks
the graph in execution order. Every tensor is described by its *channel layout*:
the channel spaces it carries, in order (a conv's output channels are one space;
a concatenation lists its parts' spaces, so each part keeps its offset), whether
it is flattened (channel ``c`` then occupies features ``c*hw .. (c+1)*hw - 1``)
and ``hw``. Each operation kind (the project's one vocabulary,
:func:`abcrown_plugins.graph.kind_of`, the same the bounds are keyed by) has one rule
(:data:`RULES`) that maps the layouts it reads to the layout it writes and records:

* **coupling**: a residual ``add`` (also ``sub``, ``mul``) of two tensors unites
  their spaces pairwise (union-find); a depthwise conv (``groups == in ==
  out``) writes its input's space, so it joins its producer's group;
* **consumers**: a conv (groups 1) or a Linear reading a space, at which channel
  offset (and ``hw`` for the Linear after a flatten, ``in_features / channels``);
* **blocks** (the space is never pruned): an operation that maps a zero channel
  to a non-zero one (a BatchNorm that does not directly follow a conv, sigmoid,
  adding or subtracting a constant, per-channel constants), a grouped conv that
  is not depthwise, a layer called twice, anything that mixes channels (a
  reshape that is not a flatten, a concatenation along another dimension,
  softmax, slicing, transposes), the network input and the network output.

A conv is prunable when its group is not blocked. Masking its filter, its bias and,
when an affine BatchNorm2d follows it directly (its ``bn``), the BatchNorm's affine
parameters makes a pruned channel exactly 0, which every zero-preserving rule (ReLU,
pooling, a residual add of two pruned channels, a concatenation, a flatten) keeps 0
up to the layers that read it. So a conv without BatchNorm (most exported ONNX
networks have BatchNorm folded into their convs) is prunable too; ``bn_gamma``
importance needs the BatchNorm and says so.

An operation no rule covers is one :class:`UserError` naming the operation and
the node, but only where it reads a conv's prunable channels; elsewhere (on the
logits, on the raw input) it only makes its inputs unprunable.

The network input's width is read off the first layer that reads it, or
``model.input_shape`` (C, H, W) when set; it matters only where the input is
concatenated with conv channels. The kinds follow
:mod:`abcrown_plugins.graph.structure`'s where they overlap; this walk also knows
the zero-preserving activations, sigmoid, adaptive pooling, ``mean`` and
depthwise convs that channel coupling meets in users' networks.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx, nn

from abcrown_plugins.errors import UserError
from abcrown_plugins.graph.structure import fetch_attr
from abcrown_plugins.graph.structure import kind_of as graph_kind_of
from abcrown_plugins.graph.structure import trace

__all__ = ["ChannelGraph", "Consumer", "RULES", "kind_of", "read_channel_graph"]


@dataclass(frozen=True)
class Consumer:
    """A layer reading a group's channels: a conv (input channels) or a Linear after a flatten.

    The group's channel ``c`` is the consumer's input channel ``offset + c``;
    for a Linear it occupies input features ``(offset + c)*hw .. (offset + c + 1)*hw - 1``.
    """

    name: str
    kind: str  # "conv" or "linear"
    hw: int = 1
    offset: int = 0


@dataclass(frozen=True)
class ChannelGraph:
    """The channel structure of a model.

    ``groups``: coupled prunable convs (must share one mask), groups and members
    in module order; ``bn``: conv name -> name of the BatchNorm that directly
    follows it; ``consumers``: one entry per group (same order) listing the
    layers that read the group's channels; ``blocked``: convs seen but not prunable.
    """

    groups: tuple[tuple[str, ...], ...]
    bn: dict[str, str]
    consumers: tuple[tuple[Consumer, ...], ...]
    blocked: frozenset[str] = field(default_factory=frozenset)

    def group_of(self, conv: str) -> int:
        for i, g in enumerate(self.groups):
            if conv in g:
                return i
        raise KeyError(conv)


# ---------------------------------------------------------------------------------------------
# Values of the walk: what an fx node computes, as far as channels are concerned.

class _Const:
    """A value computed without the input (a parameter, buffer, number, or arithmetic on them)."""


class _Shape:
    """A value computed from a tensor's shape (``x.size(0)``), never a tensor of the network."""


CONST, SHAPE = _Const(), _Shape()


@dataclass(frozen=True)
class Layout:
    """A tensor of the network: the channel spaces it carries, in order (None: unknown, unprunable).

    ``flat``: the tensor is N x F with the spaces flattened channel-major; ``hw``:
    features per channel (None until a Linear or a reshape tells it).
    """

    spaces: tuple[int, ...] | None
    flat: bool = False
    hw: int | None = None


UNKNOWN = Layout(None)


class _Walk:
    """State of one walk over a traced graph: spaces (union-find), consumers, BatchNorms."""

    def __init__(self, root: nn.Module, graph: fx.Graph, input_channels: int | None):
        self.root = root
        self.graph = graph
        self.input_channels = input_channels
        self.parent: list[int] = []
        self.length: list[int | None] = []
        self.blocked: set[int] = set()
        self.conv_space: dict[str, int] = {}       # conv name -> the space of its output channels
        self.bn: dict[str, str] = {}               # conv name -> BatchNorm name
        self.consumers: list[tuple[int, Consumer]] = []
        self.values: dict[fx.Node, Any] = {}
        self.calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                self.calls[node.target] = self.calls.get(node.target, 0) + 1

    # spaces ------------------------------------------------------------------------------------
    def space(self, length: int | None, blocked: bool = False) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.length.append(length)
        if blocked:
            self.blocked.add(i)
        return i

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        la, lb = self.length[ra], self.length[rb]
        if la is not None and lb is not None and la != lb:  # cannot happen in a network that runs
            self.blocked |= {ra, rb}
        self.parent[rb] = ra
        self.length[ra] = la if la is not None else lb

    def is_blocked(self, s: int) -> bool:
        r = self.find(s)
        return any(self.find(b) == r for b in self.blocked)

    def len_of(self, s: int) -> int | None:
        return self.length[self.find(s)]

    def block(self, *values: Any) -> None:
        for v in values:
            if isinstance(v, Layout) and v.spaces is not None:
                self.blocked.update(v.spaces)

    def opaque(self, *values: Any) -> Layout:
        """Block what ``values`` carry; the result's channels are unknown."""
        self.block(*values)
        return UNKNOWN

    def offsets(self, x: Layout, total: int | None) -> list[int] | None:
        """Channel offsets of ``x``'s spaces; one unknown length is solved from ``total``."""
        lengths = [self.len_of(s) for s in x.spaces]
        unknown = [i for i, n in enumerate(lengths) if n is None]
        if len(unknown) == 1 and total is not None:
            rest = total - sum(n for n in lengths if n is not None)
            if rest <= 0:
                return None
            self.length[self.find(x.spaces[unknown[0]])] = lengths[unknown[0]] = rest
        elif unknown:
            return None
        if total is not None and sum(lengths) != total:
            return None
        out, at = [], 0
        for n in lengths:
            out.append(at)
            at += n
        return out

    def convs_carried(self, values: list[Layout]) -> list[str]:
        """The convs whose channels, not (yet) blocked, ``values`` carry."""
        roots = {self.find(s) for v in values if v.spaces is not None for s in v.spaces if not self.is_blocked(s)}
        return [c for c, s in self.conv_space.items() if self.find(s) in roots]

    def module(self, target: str) -> nn.Module:
        return self.root.get_submodule(target)

    def value(self, arg: Any) -> Any:
        """The walk's value of an fx argument (nodes looked up, containers mapped, literals kept)."""
        if isinstance(arg, fx.Node):
            return self.values[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        return arg

    def scalar(self, arg: Any) -> bool:
        """A python number, a shape value, or a one-element constant tensor."""
        if isinstance(arg, (int, float, bool)):
            return True
        if isinstance(arg, fx.Node):
            v = self.values[arg]
            if v is SHAPE:
                return True
            if v is CONST and arg.op == "get_attr":
                t = fetch_attr(self.root, arg.target)
                return isinstance(t, torch.Tensor) and t.numel() == 1
        return False


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _features(values: list[Any]) -> list[Layout]:
    out = []
    for v in values:
        if isinstance(v, Layout):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(_features(list(v)))
    return out


# ---------------------------------------------------------------------------------------------
# Operation kinds and their rules.

def kind_of(node: fx.Node, root: nn.Module) -> str | None:
    """The kind of an fx call node: :func:`abcrown_plugins.graph.kind_of`'s, plus the shape helpers."""
    if node.op == "call_method" and node.target in ("size", "dim", "numel"):
        return "shape"
    if node.op == "call_function" and node.target is getattr:
        return "getattr"
    if node.op == "call_function" and node.target is operator.getitem:
        return "getitem"
    return graph_kind_of(node, root)


def _rule_zero(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    """Per channel (or per element), 0 -> 0: the layout passes through."""
    return vals[0]


def _rule_channelwise(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    """Per channel, but 0 -> non-zero (sigmoid, normalisation): channels stay aligned, unprunable."""
    w.block(vals[0])
    return vals[0]


def _rule_pool(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    """Spatial, per channel, 0 -> 0 (pooling, upsampling, zero padding) on N x C x H x W."""
    x = vals[0]
    return x if x.spaces is not None and not x.flat else w.opaque(x)


def _rule_mixing(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    """Mixes or moves channels (softmax, transposes, slicing, functional conv): nothing prunable."""
    return w.opaque(*_features(vals))


def _rule_shape(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    return SHAPE


def _rule_getattr(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    """``x.shape``, ``x.dtype``: not tensors of the network; another attribute (``x.T``) mixes."""
    return SHAPE if node.args[1] in ("shape", "dtype", "device", "ndim") else w.opaque(vals[0])


def _rule_getitem(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    return w.opaque(vals[0]) if isinstance(vals[0], Layout) else SHAPE if vals[0] is SHAPE else CONST


def _rule_conv(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    conv: nn.Conv2d = w.module(node.target)
    name, x = node.target, vals[0]
    if w.calls[name] > 1:  # shared weights: keep it whole
        w.block(x)
        if name not in w.conv_space:
            w.conv_space[name] = w.space(conv.out_channels, blocked=True)
        return Layout((w.conv_space[name],))
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if depthwise and x.spaces is not None and not x.flat and len(x.spaces) == 1 \
            and w.offsets(x, conv.in_channels) is not None:
        w.conv_space[name] = x.spaces[0]  # output channel c reads input channel c only
        return x
    if conv.groups == 1 and x.spaces is not None and not x.flat:
        offs = w.offsets(x, conv.in_channels)
        if offs is None:
            w.block(x)
        else:
            w.consumers += [(s, Consumer(name, "conv", 1, o)) for s, o in zip(x.spaces, offs)]
    else:  # grouped, or a flat/unknown input: the input is kept whole, and so is a grouped output
        w.block(x)
    w.conv_space[name] = w.space(conv.out_channels, blocked=conv.groups != 1)
    return Layout((w.conv_space[name],))


def _rule_bn(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    """A BatchNorm2d directly after a conv is that conv's (masked with it); any other blocks."""
    bn, x, prev = w.module(node.target), vals[0], node.args[0]
    conv = w.module(prev.target) if isinstance(prev, fx.Node) and prev.op == "call_module" else None
    if (isinstance(bn, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d) and bn.affine
            and w.calls[node.target] == 1 and w.calls[prev.target] == 1 and prev.target not in w.bn
            and bn.num_features == conv.out_channels):
        w.bn[prev.target] = node.target
        return x
    w.block(x)
    return x


def _rule_linear(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    lin: nn.Linear = w.module(node.target)
    x = vals[0]
    if w.calls[node.target] == 1 and x.spaces is not None and x.flat:
        lengths = [w.len_of(s) for s in x.spaces]
        total = sum(lengths) if None not in lengths else None
        if total and lin.in_features % total == 0 and (x.hw is None or x.hw * total == lin.in_features):
            hw = lin.in_features // total
            offs = w.offsets(x, total)
            w.consumers += [(s, Consumer(node.target, "linear", hw, o)) for s, o in zip(x.spaces, offs)]
        else:
            w.block(x)
    else:
        w.block(x)
    return Layout((w.space(lin.out_features, blocked=True),), flat=True, hw=1)


def _flatten_to(w: _Walk, x: Layout, start: int, end: int) -> Layout:
    if x.spaces is None:
        return x
    if x.flat:
        return x if start == 1 and end == -1 else w.opaque(x)
    if start == 1 and end in (-1, 3):
        return Layout(x.spaces, flat=True)
    return w.opaque(x)


def _rule_flatten(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    if node.op == "call_module":
        m = w.module(node.target)
        return _flatten_to(w, vals[0], m.start_dim, m.end_dim)
    return _flatten_to(w, vals[0], _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))


def _rule_reshape(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    """A reshape to ``(batch, -1)`` or ``(batch, K)`` is a flatten; any other reshape mixes channels."""
    x = vals[0]
    shape = list(node.args[1:]) if node.op == "call_method" else [_arg(node, 1, "shape")]
    if node.op == "call_method" and not shape:
        shape = [node.kwargs.get("shape", node.kwargs.get("size"))]
    if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
        shape = list(shape[0])
    if x.spaces is None or len(shape) != 2:
        return w.opaque(x)
    d0, d1 = shape
    batch = (isinstance(d0, fx.Node) and w.values.get(d0) is SHAPE) or (isinstance(d0, int) and d0 >= 1)
    if d0 == -1:
        batch = isinstance(d1, int) and d1 > 0
    if not batch or not (d1 == -1 or (isinstance(d1, int) and d1 > 0)):
        return w.opaque(x)
    flat = x if x.flat else Layout(x.spaces, flat=True)
    if isinstance(d1, int) and d1 > 0:
        lengths = [w.len_of(s) for s in x.spaces]
        if None in lengths or d1 % sum(lengths) or (flat.hw is not None and flat.hw * sum(lengths) != d1):
            return w.opaque(x)
        flat = Layout(x.spaces, flat=True, hw=d1 // sum(lengths))
    return flat


def _rule_mean(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    """The mean over H and W: per channel, 0 -> 0; without keepdim it is a flatten with hw 1."""
    x = vals[0]
    dims = _arg(node, 1, "dim")
    keep = bool(_arg(node, 2, "keepdim", False))
    dims = {d % 4 for d in dims} if isinstance(dims, (list, tuple)) and all(isinstance(d, int) for d in dims) else None
    if x.spaces is None or x.flat or dims != {2, 3}:
        return w.opaque(x)
    return x if keep else Layout(x.spaces, flat=True, hw=1)


def _rule_concat(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
    parts = vals[0] if isinstance(vals[0], (list, tuple)) else []
    dim = _arg(node, 1, "dim", 0)
    if parts and all(isinstance(p, Layout) and p.spaces is not None and not p.flat for p in parts) \
            and dim in (1, -3):
        return Layout(tuple(s for p in parts for s in p.spaces))
    return w.opaque(*_features(list(parts) if isinstance(parts, (list, tuple)) else [parts]))


def _binary(kind: str) -> Callable[[_Walk, fx.Node, list[Any]], Any]:
    def rule(w: _Walk, node: fx.Node, vals: list[Any]) -> Any:
        a_arg, b_arg = _arg(node, 0, "input"), _arg(node, 1, "other")
        a, b = w.value(a_arg), w.value(b_arg)
        if isinstance(a, Layout) and isinstance(b, Layout):
            if kind != "div" and a.spaces is not None and b.spaces is not None and a.flat == b.flat \
                    and len(a.spaces) == len(b.spaces) and (a.hw is None or b.hw is None or a.hw == b.hw):
                for s, t in zip(a.spaces, b.spaces):  # channel c of a meets channel c of b: one mask
                    w.union(s, t)
                return Layout(a.spaces, a.flat, a.hw if a.hw is not None else b.hw)
            return w.opaque(a, b)
        x, other_arg, x_first = (a, b_arg, True) if isinstance(a, Layout) else (b, a_arg, False)
        if kind == "mul" and w.scalar(other_arg):
            return x  # c * 0 = 0
        if kind == "div" and x_first and w.scalar(other_arg):
            return x
        if kind in ("add", "sub") and isinstance(other_arg, (int, float)) and other_arg == 0:
            return x
        w.block(x)  # a per-channel constant or a shift: aligned, but 0 -> non-zero
        return x
    return rule


#: Operation kind (:data:`abcrown_plugins.graph.MODULE_KINDS` and friends) -> rule(walk, node, values of
#: the node's args) -> the value of the node.
RULES: dict[str, Callable[[_Walk, fx.Node, list[Any]], Any]] = {
    "conv": _rule_conv, "linear": _rule_linear, "bn": _rule_bn,
    "relu": _rule_zero, "activation": _rule_zero, "identity": _rule_zero, "neg": _rule_zero,
    "normalize": _rule_channelwise, "sigmoid": _rule_channelwise,
    "maxpool": _rule_pool, "avgpool": _rule_pool, "maxpool_fn": _rule_pool, "avgpool_fn": _rule_pool,
    "upsample": _rule_pool, "pad": _rule_pool,
    "flatten": _rule_flatten, "reshape": _rule_reshape, "mean": _rule_mean, "concat": _rule_concat,
    "add": _binary("add"), "sub": _binary("sub"), "mul": _binary("mul"), "div": _binary("div"),
    "softmax": _rule_mixing, "mixing": _rule_mixing,
    "shape": _rule_shape, "getattr": _rule_getattr, "getitem": _rule_getitem,
}


#: Kinds whose rule finds the tensor operands itself (they need not come first).
_OPERAND_RULES = frozenset({"concat", "add", "sub", "mul", "div", "getitem"})


def _what(node: fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        return f"layer {type(root.get_submodule(node.target)).__name__} '{node.target}'"
    if node.op == "call_function":
        fn = node.target
        return f"function {getattr(fn, '__module__', None) or ''}.{getattr(fn, '__name__', repr(fn))}".replace(
            "function .", "function ")
    return f"method Tensor.{node.target}"


def read_channel_graph(model: nn.Module) -> ChannelGraph:
    """The :class:`ChannelGraph` of ``model`` (see the module docstring)."""
    root, graph = trace(model, "the channel structure")
    shape = getattr(model, "input_shape", None)
    w = _Walk(root, graph, int(shape[0]) if shape is not None and len(shape) == 3 else None)
    first_input = True
    for node in graph.nodes:
        if node.op == "placeholder":
            w.values[node] = Layout((w.space(w.input_channels if first_input else None, blocked=True),))
            first_input = False
            continue
        if node.op == "get_attr":
            w.values[node] = CONST
            continue
        if node.op == "output":
            w.block(*_features([w.value(a) for a in node.args]))
            continue
        vals = [w.value(a) for a in node.args]
        kw = [w.value(v) for v in node.kwargs.values()]
        feats = _features(vals + kw)
        if not feats:  # constants or shape arithmetic
            w.values[node] = SHAPE if any(v is SHAPE for v in vals + kw) else CONST
            continue
        kind = kind_of(node, root)
        if kind is None:
            convs = w.convs_carried(feats)
            if convs:
                raise UserError(f"channel pruning has no rule for the {_what(node, root)} (node '{node.name}'), "
                                f"which reads the channels of conv '{convs[0]}'; use a supported operation "
                                "(abcrown_plugins.pruning.coupling lists them) or a weight pruning method")
            w.values[node] = w.opaque(*feats)
            continue
        if kind not in _OPERAND_RULES and not (vals and isinstance(vals[0], Layout)):
            w.values[node] = w.opaque(*feats)  # the tensor is not the first argument: an unknown use
            continue
        w.values[node] = RULES[kind](w, node, vals)
    return _finish(w, model)


def _finish(w: _Walk, model: nn.Module) -> ChannelGraph:
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    blocked_roots = {w.find(b) for b in w.blocked}
    members: dict[int, list[str]] = {}
    for conv, s in w.conv_space.items():
        members.setdefault(w.find(s), []).append(conv)
    kept = sorted((r for r in members if r not in blocked_roots), key=lambda r: min(order[c] for c in members[r]))
    groups = tuple(tuple(sorted(members[r], key=order.__getitem__)) for r in kept)
    index = {r: i for i, r in enumerate(kept)}
    consumers: list[list[Consumer]] = [[] for _ in groups]
    for s, cons in w.consumers:
        r = w.find(s)
        if r in index:
            consumers[index[r]].append(cons)
    names = {c for g in groups for c in g}
    return ChannelGraph(groups=groups, bn={c: b for c, b in w.bn.items() if c in names},
                        consumers=tuple(tuple(c) for c in consumers),
                        blocked=frozenset(c for c in w.conv_space if c not in names))
