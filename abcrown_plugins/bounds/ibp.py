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
batch (a fixed affine map per batch, so the rule stays sound for it);
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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from abcrown_plugins.errors import UserError
from model_zoo.layers import BasicBlock, Normalize


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


class _State:
    """Running box in centre/radius form plus what the walk records."""

    def __init__(self, lower: Tensor, upper: Tensor, record: bool):
        self.mid = (upper + lower) / 2
        self.rad = (upper - lower) / 2
        self.record = record
        self.relus: list[ReluBounds] = []
        # (BatchNorm, its input centre, radius, batch mean, batch var) until the next ReLU
        self.last_bn: tuple | None = None

    @property
    def lower(self) -> Tensor:
        return self.mid - self.rad

    @property
    def upper(self) -> Tensor:
        return self.mid + self.rad


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


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm, mid: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Scale and shift (per channel) of a BatchNorm as it acts now, and the batch statistics it used.

    The statistics are None when the BatchNorm normalises with its running ones.
    """
    if bn.training or bn.running_mean is None:
        mean, var = batch_stats(mid)
        stats = (mean, var)
    else:
        mean, var = bn.running_mean, bn.running_var
        stats = (None, None)
    inv = torch.rsqrt(var + bn.eps)
    scale = bn.weight * inv if bn.weight is not None else inv
    shift = (bn.bias if bn.bias is not None else 0) - mean * scale
    return scale, shift, *stats


def _foldable(conv: nn.Module, bn: nn.Module, st: _State) -> bool:
    """Conv followed by an eval-mode BatchNorm whose input bounds nobody asked for."""
    return (not st.record and isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            and not bn.training and bn.running_mean is not None)


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, st: _State) -> None:
    """Conv then eval BatchNorm as one affine map: W' = s W, b' = s b + t (same function, fewer passes)."""
    scale, shift, _, _ = _bn_affine(bn, st.mid)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = shift + (conv.bias * scale if conv.bias is not None else 0)
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    st.mid = F.conv2d(st.mid, weight, bias, *args)
    st.rad = F.conv2d(st.rad, weight.abs(), None, *args)
    st.last_bn = None


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


def _relu(st: _State, name: str) -> None:
    """ReLU on both ends; records the pre-activation (and pre-BN) box when asked.

    Without autograd the clamps run in place and the radius reuses the upper end's
    buffer: fewer allocations per layer, which keeps large verification batches in cache.
    """
    grad = torch.is_grad_enabled() and (st.mid.requires_grad or st.rad.requires_grad)
    if grad:
        mid, rad, lower, upper = _IntervalRelu.apply(st.mid, st.rad)
    else:
        lower, upper = st.mid - st.rad, st.mid + st.rad
    if st.record:
        rb = ReluBounds(name, lower, upper)
        if st.last_bn is not None:
            rb.bn, rb.pre_bn_mid, rb.pre_bn_rad, rb.bn_mean, rb.bn_var = st.last_bn
        st.relus.append(rb)
    st.last_bn = None
    if grad:
        st.mid, st.rad = mid, rad
        return
    if st.record:  # the recorded ends must stay as they are
        lower, upper = F.relu(lower), F.relu(upper)
    else:
        lower, upper = lower.clamp_min_(0), upper.clamp_min_(0)
    st.mid, st.rad = _centre_radius_(lower, upper)


def _apply(module: nn.Module, st: _State, name: str, spec: Tensor | None, last: bool) -> None:
    if isinstance(module, nn.Sequential):
        children = list(module.named_children())
        i = 0
        while i < len(children):
            child_name, child = children[i]
            if i + 1 < len(children) and _foldable(child, children[i + 1][1], st):
                _conv_bn(child, children[i + 1][1], st)
                i += 2
                continue
            _apply(child, st, f"{name}.{child_name}" if name else child_name, spec,
                   last and i == len(children) - 1)
            i += 1
        return
    if isinstance(module, nn.Linear):
        if last and spec is not None:
            # fold C into the last layer: W' = C W (N x K x in), b' = C b
            w = spec.matmul(module.weight)
            b = spec.matmul(module.bias) if module.bias is not None else 0
            st.mid = torch.einsum("nki,ni->nk", w, st.mid) + b
            st.rad = torch.einsum("nki,ni->nk", w.abs(), st.rad)
        else:
            st.mid = F.linear(st.mid, module.weight, module.bias)
            st.rad = F.linear(st.rad, module.weight.abs())
        st.last_bn = None
        return
    if isinstance(module, nn.Conv2d):
        args = (module.stride, module.padding, module.dilation, module.groups)
        st.mid = F.conv2d(st.mid, module.weight, module.bias, *args)
        st.rad = F.conv2d(st.rad, module.weight.abs(), None, *args)
        st.last_bn = None
        return
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        pre_mid, pre_rad = st.mid, st.rad
        scale, shift, mean, var = _bn_affine(module, st.mid)
        view = (1, -1) + (1,) * (st.mid.dim() - 2)
        st.mid = torch.addcmul(shift.view(view), st.mid, scale.view(view))
        st.rad = st.rad * scale.abs().view(view)
        st.last_bn = (module, pre_mid, pre_rad, mean, var) if st.record else None
        return
    if isinstance(module, nn.ReLU):
        _relu(st, name)
        return
    if isinstance(module, Normalize):
        st.mid = (st.mid - module.mean) / module.std
        st.rad = st.rad / module.std
        return
    if isinstance(module, (nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Dropout)):
        # linear with non-negative coefficients (or reshape): apply to both ends
        if isinstance(module, nn.Dropout) and module.training:
            raise UserError("IBP through Dropout in train mode is undefined; call model.eval()")
        st.mid, st.rad = module(st.mid), module(st.rad)
        return
    if isinstance(module, BasicBlock):
        _basic_block(module, st, name)
        return
    raise UserError(f"IBP has no rule for layer '{name}' ({type(module).__name__}); supported: Conv2d, "
                    "Linear, BatchNorm, ReLU, Flatten, AvgPool2d, Normalize, BasicBlock, Sequential")


def _basic_block(block: BasicBlock, st: _State, name: str) -> None:
    mid, rad = st.mid, st.rad
    for convs in (("conv1", "bn1"), ("conv2", "bn2")):
        conv, bn = (getattr(block, c) for c in convs)
        if _foldable(conv, bn, st):
            _conv_bn(conv, bn, st)
        else:
            for c in convs:
                _apply(getattr(block, c), st, f"{name}.{c}", None, False)
        if convs[0] == "conv1":
            _apply(block.relu1, st, f"{name}.relu1", None, False)
    main_mid, main_rad, main_bn = st.mid, st.rad, st.last_bn
    st.mid, st.rad = mid, rad
    _apply(block.shortcut, st, f"{name}.shortcut", None, False)
    st.mid, st.rad = main_mid + st.mid, main_rad + st.rad
    # the residual add sits between bn2 and relu2: pre-BN bounds are not those of relu2's input
    st.last_bn = None
    del main_bn
    _apply(block.relu2, st, f"{name}.relu2", None, False)


def interval_propagate(model: nn.Module, lower: Tensor, upper: Tensor, spec: Tensor | None = None,
                       record: bool = True) -> IBPResult:
    """Propagate the box ``[lower, upper]`` (N x C x H x W) through ``model``.

    With ``spec`` (N x K x classes) the result bounds ``spec @ f(x)`` (N x K);
    else ``f(x)`` (N x classes). ``record`` keeps per-ReLU bounds.
    """
    if lower.shape != upper.shape:
        raise ValueError(f"lower {tuple(lower.shape)} and upper {tuple(upper.shape)} differ in shape")
    st = _State(lower, upper, record)
    _apply(model, st, "", spec, True)
    if spec is not None and st.mid.dim() == 2 and st.mid.shape[-1] != spec.shape[1]:
        # the last layer was not Linear: multiply the output box by C
        st.mid, st.rad = (torch.einsum("nkc,nc->nk", spec, st.mid),
                          torch.einsum("nkc,nc->nk", spec.abs(), st.rad))
    return IBPResult(st.lower, st.upper, st.relus)


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
