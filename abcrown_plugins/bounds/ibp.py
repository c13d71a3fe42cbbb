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
    """Bounds around one ReLU: pre-activation and (if a BatchNorm precedes it) pre-BN."""

    name: str
    lower: Tensor
    upper: Tensor
    pre_bn_lower: Tensor | None = None
    pre_bn_upper: Tensor | None = None
    bn: nn.BatchNorm2d | nn.BatchNorm1d | None = None


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
        self.last_bn: tuple[nn.Module, Tensor, Tensor] | None = None

    @property
    def lower(self) -> Tensor:
        return self.mid - self.rad

    @property
    def upper(self) -> Tensor:
        return self.mid + self.rad


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm, mid: Tensor) -> tuple[Tensor, Tensor]:
    """Scale and shift (per channel) of a BatchNorm as it acts now."""
    if bn.training or bn.running_mean is None:
        dims = [0] + list(range(2, mid.dim()))
        mean = mid.mean(dims)
        var = mid.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    inv = torch.rsqrt(var + bn.eps)
    scale = bn.weight * inv if bn.weight is not None else inv
    shift = (bn.bias if bn.bias is not None else 0) - mean * scale
    return scale, shift


def _foldable(conv: nn.Module, bn: nn.Module, st: _State) -> bool:
    """Conv followed by an eval-mode BatchNorm whose input bounds nobody asked for."""
    return (not st.record and isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            and not bn.training and bn.running_mean is not None)


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, st: _State) -> None:
    """Conv then eval BatchNorm as one affine map: W' = s W, b' = s b + t (same function, fewer passes)."""
    scale, shift = _bn_affine(bn, st.mid)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = shift + (conv.bias * scale if conv.bias is not None else 0)
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    st.mid = F.conv2d(st.mid, weight, bias, *args)
    st.rad = F.conv2d(st.rad, weight.abs(), None, *args)
    st.last_bn = None


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
        pre_bn = (module, st.lower, st.upper) if st.record else None
        scale, shift = _bn_affine(module, st.mid)
        view = (1, -1) + (1,) * (st.mid.dim() - 2)
        st.mid = st.mid * scale.view(view) + shift.view(view)
        st.rad = st.rad * scale.abs().view(view)
        st.last_bn = pre_bn
        return
    if isinstance(module, nn.ReLU):
        lower, upper = st.lower, st.upper
        if st.record:
            rb = ReluBounds(name, lower, upper)
            if st.last_bn is not None:
                rb.bn, rb.pre_bn_lower, rb.pre_bn_upper = st.last_bn
            st.relus.append(rb)
        lower, upper = F.relu(lower), F.relu(upper)
        st.mid, st.rad = (upper + lower) / 2, (upper - lower) / 2
        st.last_bn = None
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
