"""Interval bound propagation (IBP) through the zoo's layers.

Contract: for every input ``x`` with ``lower <= x <= upper`` (elementwise),
the network output ``f(x)`` satisfies ``out.lower <= f(x) <= out.upper``, up
to float rounding. Each rule maps an input box to an output box:

* affine layers (Conv2d, Linear, eval BatchNorm, Normalize) in centre/radius
  form: ``mid' = A(mid)``, ``rad' = |A|(rad)``;
* monotone layers (ReLU, average pooling, Flatten) on both ends;
* :class:`model_zoo.BasicBlock` by propagating both branches and adding.

Besides the output box, every ReLU records its pre-activation bounds and, when
it follows a BatchNorm, the BatchNorm's input ("pre-BN") bounds and the
BatchNorm itself (the stability regularisers need gamma).

A specification matrix ``C`` (N x K x classes) can be folded into the final
Linear layer, which bounds ``C f(x)`` directly (tighter than bounding ``f``
and multiplying intervals).

In train mode a BatchNorm normalises with the statistics of the box centre's
batch, or with given statistics (``bn_stats``: those of the clean forward pass,
recorded by :class:`CleanBatchStats`, as auto_LiRPA's training does); either way
a fixed affine map per batch, so the rule stays sound for it;
verification always runs in eval mode. When no per-ReLU bounds are recorded, an
eval-mode BatchNorm is folded into the convolution before it (one affine map,
the same function), which saves two passes over its output.

Speed: under autograd the interval ReLU and the train-mode batch statistics are
autograd functions with fused, hand-written backwards (checked against plain
autograd and by gradcheck in the tests); without autograd the ReLU step runs in
place. The values are those of the plain formulas up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from abcrown_plugins.errors import UserError
from abcrown_plugins.graph.structure import NetGraph, Op, evaluate_arg, structure


@dataclass
class ReluBounds:
    """Bounds around one ReLU: pre-activation and (if a BatchNorm precedes it) pre-BN.

    The pre-BN box is kept in centre/radius form (``pre_bn_mid``, ``pre_bn_rad``), the
    form the propagation computes, so recording it costs nothing; ``pre_bn_lower`` and
    ``pre_bn_upper`` derive the ends on demand. ``bn_mean``/``bn_var`` are the statistics
    the BatchNorm normalised with (train mode; None when it used its running statistics).
    """

    name: str
    lower: Tensor
    upper: Tensor
    bn: nn.BatchNorm2d | nn.BatchNorm1d | None = None
    pre_bn_mid: Tensor | None = None
    pre_bn_rad: Tensor | None = None
    bn_mean: Tensor | None = None
    bn_var: Tensor | None = None

    @property
    def pre_bn_lower(self) -> Tensor | None:
        return None if self.pre_bn_mid is None else self.pre_bn_mid - self.pre_bn_rad

    @property
    def pre_bn_upper(self) -> Tensor | None:
        return None if self.pre_bn_mid is None else self.pre_bn_mid + self.pre_bn_rad

    def set_pre_bn_box(self, lower: Tensor, upper: Tensor) -> None:
        """Record the BatchNorm's input box given by its ends."""
        self.pre_bn_mid, self.pre_bn_rad = (upper + lower) * 0.5, (upper - lower) * 0.5


@dataclass
class IBPResult:
    lower: Tensor
    upper: Tensor
    relus: list[ReluBounds] = field(default_factory=list)


class _Box:
    """The box of one operation's output in centre/radius form, plus the BatchNorm it came from.

    ``last_bn`` is (BatchNorm, its input centre, radius, batch mean, batch var) when the
    operation is a recorded BatchNorm (a ReLU reading it records the pre-BN box).
    """

    __slots__ = ("mid", "rad", "last_bn")

    def __init__(self, mid: Tensor, rad: Tensor, last_bn: tuple | None = None):
        self.mid, self.rad, self.last_bn = mid, rad, last_bn

    @property
    def lower(self) -> Tensor:
        return self.mid - self.rad

    @property
    def upper(self) -> Tensor:
        return self.mid + self.rad


class _Walk:
    """What one propagation records and needs besides the boxes."""

    def __init__(self, graph: NetGraph, record: bool, spec: Tensor | None,
                 bn_stats: dict[nn.Module, tuple[Tensor, Tensor]] | None = None):
        self.graph = graph
        self.record = record
        self.spec = spec
        self.bn_stats = bn_stats or {}
        self.relus: list[ReluBounds] = []
        self.shapes: dict[fx.Node, Tensor] = {}  # op node -> a tensor of its output's shape (the centre)
        self.folded: dict[int, _Box] = {}  # BatchNorm index -> the box of conv+BatchNorm folded into one map


class _BatchStats(torch.autograd.Function):
    """Per-channel mean and biased variance over every dim but 1, with a one-pass backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, Tensor]:
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims, keepdim=True)
        centred = x - mean
        var = torch.mul(centred, centred).mean(dims)
        ctx.save_for_backward(centred)
        ctx.count = x.numel() // x.shape[1]
        return mean.flatten(), var

    @staticmethod
    def backward(ctx, g_mean: Tensor, g_var: Tensor):
        (centred,) = ctx.saved_tensors
        view = (1, -1) + (1,) * (centred.dim() - 2)
        # d mean / dx = 1/n; d var / dx = 2 (x - mean) / n (the centring term sums to zero)
        return torch.addcmul((g_mean / ctx.count).view(view), centred, (g_var * (2 / ctx.count)).view(view))


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x`` (N x C x ...), as train-mode BatchNorm uses.

    Two passes (``mean``, then ``mean((x - mean)^2)``): numerically the textbook stable
    form, and on CPU several times faster than ``torch.var`` over the (0, 2, 3) dims;
    differentiable, with a fused backward.
    """
    return _BatchStats.apply(x)


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm, mid: Tensor,
               given: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Scale and shift (per channel) of a BatchNorm as it acts now, and the batch statistics it used.

    In train mode the statistics are ``given`` (the clean pass's) or else the box centre's;
    they are None when the BatchNorm normalises with its running ones.
    """
    if bn.training or bn.running_mean is None:
        mean, var = given if given is not None else batch_stats(mid)
        stats = (mean, var)
    else:
        mean, var = bn.running_mean, bn.running_var
        stats = (None, None)
    inv = torch.rsqrt(var + bn.eps)
    scale = bn.weight * inv if bn.weight is not None else inv
    shift = (bn.bias if bn.bias is not None else 0) - mean * scale
    return scale, shift, *stats


def _foldable(conv: nn.Module, bn: nn.Module, walk: _Walk) -> bool:
    """Conv followed by an eval-mode BatchNorm whose input bounds nobody asked for."""
    return (not walk.record and isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            and not bn.training and bn.running_mean is not None)


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, box: _Box) -> _Box:
    """Conv then eval BatchNorm as one affine map: W' = s W, b' = s b + t (same function, fewer passes)."""
    scale, shift, _, _ = _bn_affine(bn, box.mid)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = shift + (conv.bias * scale if conv.bias is not None else 0)
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    return _Box(F.conv2d(box.mid, weight, bias, *args), F.conv2d(box.rad, weight.abs(), None, *args))


class _IntervalRelu(torch.autograd.Function):
    """ReLU of the box ``mid +- rad`` with a fused backward.

    Returns ``(mid', rad', lower, upper)``: the output box and the pre-activation ends
    (which the stability regularisers may use, so gradients into them are taken too).
    Autograd through the plain formula would run about twice the elementwise passes.
    """

    @staticmethod
    def forward(ctx, mid: Tensor, rad: Tensor):
        lower, upper = mid - rad, mid + rad
        ctx.save_for_backward(lower, upper)
        ctx.set_materialize_grads(False)
        new_mid, new_rad = _centre_radius_(lower.clamp_min(0), upper.clamp_min(0))
        return new_mid, new_rad, lower, upper

    @staticmethod
    def backward(ctx, g_mid: Tensor | None, g_rad: Tensor | None, g_lower: Tensor | None,
                 g_upper: Tensor | None):
        lower, upper = ctx.saved_tensors
        g_up = g_lo = None
        if g_mid is not None or g_rad is not None:
            gm = g_mid if g_mid is not None else torch.zeros_like(lower)
            gr = g_rad if g_rad is not None else torch.zeros_like(lower)
            # mid' = (relu(u) + relu(l)) / 2, rad' = (relu(u) - relu(l)) / 2; the 1/2 is applied last
            g_up = torch.ops.aten.threshold_backward(gm + gr, upper, 0)
            g_lo = torch.ops.aten.threshold_backward(gm - gr, lower, 0)
            if g_upper is not None:
                g_up.add_(g_upper, alpha=2)
            if g_lower is not None:
                g_lo.add_(g_lower, alpha=2)
            half = 0.5
        else:
            g_up, g_lo, half = g_upper, g_lower, 1.0
        if g_up is None and g_lo is None:
            return None, None
        if g_up is None:
            return g_lo * half, g_lo * -half
        if g_lo is None:
            return g_up * half, g_up * half
        # lower = mid - rad, upper = mid + rad
        g_in_mid = torch.add(g_up, g_lo).mul_(half)
        g_in_rad = torch.sub(g_up, g_lo).mul_(half)
        return g_in_mid, g_in_rad


def _centre_radius_(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """``((u + l) / 2, (u - l) / 2)``, the centre new and the radius written into ``upper``."""
    mid = torch.lerp(lower, upper, 0.5)
    return mid, torch.sub(upper, mid, out=upper)


def _relu(op: Op, ins: list[_Box], walk: _Walk) -> _Box:
    """ReLU on both ends; records the pre-activation (and pre-BN) box when asked.

    Without autograd the clamps run in place and the radius reuses the upper end's
    buffer: fewer allocations per layer, which keeps large verification batches in cache.
    """
    (box,) = ins
    grad = torch.is_grad_enabled() and (box.mid.requires_grad or box.rad.requires_grad)
    if grad:
        mid, rad, lower, upper = _IntervalRelu.apply(box.mid, box.rad)
    else:
        lower, upper = box.mid - box.rad, box.mid + box.rad
    if walk.record:
        rb = ReluBounds(op.name, lower, upper)
        if box.last_bn is not None:
            rb.bn, rb.pre_bn_mid, rb.pre_bn_rad, rb.bn_mean, rb.bn_var = box.last_bn
        walk.relus.append(rb)
    if grad:
        return _Box(mid, rad)
    if walk.record:  # the recorded ends must stay as they are
        lower, upper = F.relu(lower), F.relu(upper)
    else:
        lower, upper = lower.clamp_min_(0), upper.clamp_min_(0)
    return _Box(*_centre_radius_(lower, upper))


def _linear(op: Op, ins: list[_Box], walk: _Walk) -> _Box:
    (box,), module = ins, op.module
    if op.index == walk.graph.output and walk.spec is not None:
        # fold C into the last layer: W' = C W (N x K x in), b' = C b
        w = walk.spec.matmul(module.weight)
        b = walk.spec.matmul(module.bias) if module.bias is not None else 0
        return _Box(torch.einsum("nki,ni->nk", w, box.mid) + b, torch.einsum("nki,ni->nk", w.abs(), box.rad))
    return _Box(F.linear(box.mid, module.weight, module.bias), F.linear(box.rad, module.weight.abs()))


def _conv(op: Op, ins: list[_Box], walk: _Walk) -> _Box:
    (box,), module = ins, op.module
    users = walk.graph.users(op.index)
    if len(users) == 1 and users[0].kind == "bn" and _foldable(module, users[0].module, walk):
        walk.folded[users[0].index] = _conv_bn(module, users[0].module, box)
        return box  # the BatchNorm's output is the folded map's; this one is never read
    args = (module.stride, module.padding, module.dilation, module.groups)
    return _Box(F.conv2d(box.mid, module.weight, module.bias, *args),
                F.conv2d(box.rad, module.weight.abs(), None, *args))


def _batchnorm(op: Op, ins: list[_Box], walk: _Walk) -> _Box:
    (box,), module = ins, op.module
    if op.index in walk.folded:
        return walk.folded.pop(op.index)
    scale, shift, mean, var = _bn_affine(module, box.mid, walk.bn_stats.get(module))
    view = (1, -1) + (1,) * (box.mid.dim() - 2)
    out = _Box(torch.addcmul(shift.view(view), box.mid, scale.view(view)), box.rad * scale.abs().view(view))
    if walk.record:
        out.last_bn = (module, box.mid, box.rad, mean, var)
    return out


def _normalize(op: Op, ins: list[_Box], walk: _Walk) -> _Box:
    (box,), module = ins, op.module
    return _Box((box.mid - module.mean) / module.std, box.rad / module.std)


def _same_on_both(op: Op, ins: list[_Box], walk: _Walk) -> _Box:
    """A linear map with non-negative coefficients (pooling by averaging) or a reshape: both ends alike."""
    (box,) = ins
    if isinstance(op.module, nn.Dropout) and op.module.training:
        raise UserError("IBP through Dropout in train mode is undefined; call model.eval()")
    return _Box(_call(op, walk, {op.inputs[0]: box.mid}), _call(op, walk, {op.inputs[0]: box.rad}))


def _monotone(op: Op, ins: list[_Box], walk: _Walk) -> _Box:
    """A monotone map applied elementwise or by taking maxima (max pooling, sigmoid): the map of the bounds.

    The bounds of max pooling are the max of the bounds.
    """
    (box,) = ins
    i = op.inputs[0]
    lower, upper = _call(op, walk, {i: box.mid - box.rad}), _call(op, walk, {i: box.mid + box.rad})
    return _Box((upper + lower) * 0.5, (upper - lower) * 0.5)


def _neg(op: Op, ins: list[_Box], walk: _Walk) -> _Box:
    (box,) = ins
    return _Box(-box.mid, box.rad)


def _concat(op: Op, ins: list[_Box], walk: _Walk) -> _Box:
    mids = _call(op, walk, {i: b.mid for i, b in zip(op.inputs, ins)})
    rads = _call(op, walk, {i: b.rad for i, b in zip(op.inputs, ins)})
    return _Box(mids, rads)


def _arith(op: Op, ins: list[_Box], walk: _Walk) -> _Box:
    """x + y, x - y of two boxes; x + c, x - c, c - x, c * x, x / c with a constant c."""
    boxes = dict(zip(op.inputs, ins))
    index = walk.graph.index
    # constants and shape values are evaluated into the walk's shape environment (cached for the call)
    args = [boxes.get(index[a]) if isinstance(a, fx.Node) and a in index else
            evaluate_arg(a, walk.shapes, walk.graph.root) for a in op.node.args[:2]]
    if len(args) != 2 or op.node.kwargs:
        raise UserError(f"IBP: node '{op.node.name}' ({op.kind}) with arguments {op.node.args!r} is not supported")
    x, y = args
    if isinstance(x, _Box) and isinstance(y, _Box):
        if op.kind == "add":
            return _Box(x.mid + y.mid, x.rad + y.rad)
        if op.kind == "sub":
            return _Box(x.mid - y.mid, x.rad + y.rad)
        raise UserError(f"IBP: node '{op.node.name}' multiplies or divides two tensors (not supported)")
    if op.kind == "add":
        box, c = (x, y) if isinstance(x, _Box) else (y, x)
        return _Box(box.mid + c, box.rad)
    if op.kind == "sub":
        return _Box(x.mid - y, x.rad) if isinstance(x, _Box) else _Box(x - y.mid, y.rad)
    if op.kind == "mul":
        box, c = (x, y) if isinstance(x, _Box) else (y, x)
        return _Box(box.mid * c, box.rad * abs(c) if isinstance(c, (int, float)) else box.rad * c.abs())
    if op.kind == "div" and isinstance(x, _Box):
        return _Box(x.mid / y, x.rad / (abs(y) if isinstance(y, (int, float)) else y.abs()))
    raise UserError(f"IBP: node '{op.node.name}' divides by a tensor (not supported)")


def _call(op: Op, walk: _Walk, values: dict[int, Tensor]) -> Tensor:
    """Run op's own call with the given tensors in place of its inputs (shapes and constants evaluated)."""
    if op.module is not None:
        return op.module(values[op.inputs[0]])
    env = dict(walk.shapes)
    for i, v in values.items():
        env[walk.graph.ops[i].node] = v
    args = [evaluate_arg(a, env, walk.graph.root) for a in op.node.args]
    kwargs = {k: evaluate_arg(v, env, walk.graph.root) for k, v in op.node.kwargs.items()}
    if op.node.op == "call_method":
        return getattr(args[0], op.node.target)(*args[1:], **kwargs)
    return op.node.target(*args, **kwargs)


#: Operation kind -> IBP rule (operation, its input boxes, the walk) -> output box.
IBP_RULES: dict[str, Callable[[Op, list[_Box], _Walk], _Box]] = {
    "conv": _conv, "linear": _linear, "bn": _batchnorm, "relu": _relu, "normalize": _normalize,
    "avgpool": _same_on_both, "avgpool_fn": _same_on_both, "mean": _same_on_both, "upsample": _same_on_both,
    "pad": _same_on_both, "flatten": _same_on_both, "reshape": _same_on_both, "identity": _same_on_both,
    "maxpool": _monotone, "maxpool_fn": _monotone, "sigmoid": _monotone, "neg": _neg,
    "concat": _concat, "add": _arith, "sub": _arith, "mul": _arith, "div": _arith,
}


def interval_propagate(model: nn.Module, lower: Tensor, upper: Tensor, spec: Tensor | None = None,
                       record: bool = True,
                       bn_stats: dict[nn.Module, tuple[Tensor, Tensor]] | None = None) -> IBPResult:
    """Propagate the box ``[lower, upper]`` (N x C x H x W) through ``model``.

    With ``spec`` (N x K x classes) the result bounds ``spec @ f(x)`` (N x K);
    else ``f(x)`` (N x classes). ``record`` keeps per-ReLU bounds. The model is
    walked in its :func:`abcrown_plugins.graph.structure` order, one rule per
    operation kind (:data:`IBP_RULES`). ``bn_stats`` (BatchNorm -> per-channel mean,
    biased variance) replaces the box centre's statistics of train-mode BatchNorms
    (:class:`CleanBatchStats` records a clean pass's).
    """
    if lower.shape != upper.shape:
        raise ValueError(f"lower {tuple(lower.shape)} and upper {tuple(upper.shape)} differ in shape")
    graph = structure(model)
    walk = _Walk(graph, record, spec, bn_stats)
    last_use = _last_use(graph)
    boxes: dict[int, _Box] = {}
    for op in graph.ops:
        if op.kind == "input":
            box = _Box((upper + lower) / 2, (upper - lower) / 2)
        else:
            rule = IBP_RULES.get(op.kind)
            if rule is None:
                what = (f"layer '{op.name}' ({type(op.module).__name__})" if op.module is not None
                        else f"node '{op.name}' ({op.node.target if op.node.op == 'call_method' else op.kind})")
                raise UserError(f"IBP has no rule for {what}; supported kinds: {', '.join(sorted(IBP_RULES))}")
            box = rule(op, [boxes[i] for i in op.inputs], walk)
        boxes[op.index] = box
        if op.index in graph.shape_read:
            walk.shapes[op.node] = box.mid
        for i in op.inputs:
            if last_use[i] == op.index:
                boxes.pop(i, None)
    out = boxes[graph.output]
    mid, rad = out.mid, out.rad
    if spec is not None and graph.ops[graph.output].kind != "linear":
        # the last operation was not a Linear (C was not folded in): multiply the output box by C
        mid, rad = torch.einsum("nkc,nc->nk", spec, mid), torch.einsum("nkc,nc->nk", spec.abs(), rad)
    return IBPResult(mid - rad, mid + rad, walk.relus)


class CleanBatchStats:
    """Records, during a forward pass, the batch statistics every train-mode BatchNorm normalises with.

    ``with CleanBatchStats(model) as stats: logits = model(x)``, then
    ``interval_propagate(..., bn_stats=stats.stats)``: the bounds use the clean batch's
    statistics (differentiable, as the forward's are), the ones that also go into the
    running averages, so the network verified in eval mode is the one trained.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.stats: dict[nn.Module, tuple[Tensor, Tensor]] = {}
        self._handles: list = []

    def _record(self, module: nn.Module, args: tuple) -> None:
        if module.training or module.running_mean is None:
            self.stats[module] = batch_stats(args[0])

    def __enter__(self) -> "CleanBatchStats":
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                self._handles.append(m.register_forward_pre_hook(self._record))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _last_use(graph: NetGraph) -> dict[int, int]:
    last = {op.index: op.index for op in graph.ops}
    for op in graph.ops:
        for i in op.inputs:
            last[i] = max(last[i], op.index)
    last[graph.output] = len(graph.ops)
    return last


def input_box(x: Tensor, eps: float, data_min: float = 0.0, data_max: float = 1.0) -> tuple[Tensor, Tensor]:
    """The L-inf ball of radius ``eps`` around ``x``, clipped to the pixel range."""
    return (x - eps).clamp(data_min, data_max), (x + eps).clamp(data_min, data_max)


def margin_spec(labels: Tensor, num_classes: int) -> Tensor:
    """C (N x classes-1 x classes) with rows ``e_label - e_j`` for every ``j != label``.

    ``C f(x) > 0`` in every row means the label's logit beats every other one.
    """
    n = labels.shape[0]
    eye = torch.eye(num_classes, device=labels.device)
    c = eye[labels].unsqueeze(1) - eye.unsqueeze(0)  # N x classes x classes
    keep = ~torch.eye(num_classes, dtype=torch.bool, device=labels.device)[labels]  # N x classes
    return c[keep].view(n, num_classes - 1, num_classes)


def margin_lower_bounds(model: nn.Module, x: Tensor, labels: Tensor, eps: float, num_classes: int,
                        record: bool = False) -> IBPResult:
    """IBP bounds on ``f_label(x') - f_j(x')`` over the clipped eps-ball of ``x``."""
    lower, upper = input_box(x, eps)
    return interval_propagate(model, lower, upper, spec=margin_spec(labels, num_classes), record=record)
