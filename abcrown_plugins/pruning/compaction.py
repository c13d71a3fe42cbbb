"""Physical compaction: a channel-pruned model rebuilt with fewer channels.

``compact(model, cmask)`` returns a new model of the same module types whose
pruned output channels are gone: from each prunable conv (weight rows, bias; a
depthwise member also loses its groups) and its BatchNorm (weight, bias,
running_mean, running_var), and from the inputs of every layer that reads them,
as :func:`abcrown_plugins.pruning.channels.channel_graph` lists them: the input
channels of a conv (at the group's offset in a concatenation) and the input
features of a Linear after a flatten (channel ``c`` of a ``C x H x W`` map
occupies features ``c*H*W .. (c+1)*H*W - 1``). Works for any network the
channel graph reads: zoo models, ``fx.GraphModule``s (the ONNX importer's) and
users' own modules; the copy keeps the original's code, only layer widths change.

Contract: in eval mode, ``compact(model, cmask)(x)`` equals the *masked* model
(``channel_to_weight_mask(model, cmask).apply_(model)``) up to float rounding,
because a masked channel is exactly 0 after its BatchNorm, stays 0 through
ReLU, pooling, concatenation, flatten and a residual add of two pruned channels
(coupled convs share one mask), and so contributes nothing to the layers that read it.

Storing a compacted model: its ``state_dict`` is plain (same keys as the dense
model, smaller tensors). Keep the architecture and the channel mask beside it
(``cmask`` is a dict of bool tensors, fine for ``torch.save``/``weights_only``
loading); :func:`load_compacted` rebuilds it as
``compact(build_model(arch, ...), cmask)`` followed by a strict
``load_state_dict``.
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import Tensor, fx, nn

from abcrown_plugins.pruning.channels import channel_graph, validate_channel_mask


def _deepcopy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy``, keeping what it drops from an ``fx.GraphModule``: its class name and the
    attributes set on it after construction (``input_shape``)."""
    new = copy.deepcopy(model)
    if isinstance(model, fx.GraphModule):
        for k, v in vars(model).items():
            if k not in vars(new):
                setattr(new, k, copy.deepcopy(v))
        type(new).__name__ = type(model).__name__  # fx gives every GraphModule its own class
    return new


def _set_param(module: nn.Module, name: str, value: Tensor) -> None:
    old = getattr(module, name)
    if old is None:
        return
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
    else:  # a buffer (BatchNorm running statistics)
        setattr(module, name, value.detach().clone())


@torch.no_grad()
def compact(model: nn.Module, cmask: Mapping[str, Tensor]) -> nn.Module:
    """A new, physically smaller copy of ``model`` without the channels ``cmask`` prunes.

    ``model`` is not modified. The result has the same module types and names,
    is in eval mode and equals the masked model (see the module docstring)
    within float rounding. Raises ValueError for an invalid ``cmask``.
    """
    graph = channel_graph(model)
    validate_channel_mask(model, cmask, graph)
    new = _deepcopy(model)
    modules = dict(new.named_modules())
    reads: dict[str, Tensor] = {}  # consumer -> bool over its input channels (conv) or features (Linear)
    for group, consumers in zip(graph.groups, graph.consumers):
        keep = cmask[group[0]].detach().cpu().to(torch.bool)
        if bool(keep.all()):
            continue
        idx = keep.nonzero().flatten()
        for conv_name in group:
            conv, bn = modules[conv_name], modules.get(graph.bn.get(conv_name))
            depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
            _set_param(conv, "weight", conv.weight[idx.to(conv.weight.device)])
            _set_param(conv, "bias", conv.bias[idx.to(conv.bias.device)] if conv.bias is not None else None)
            conv.out_channels = idx.numel()
            if depthwise:  # channel c reads input channel c only: the input shrinks with it
                conv.in_channels = conv.groups = idx.numel()
            if bn is not None:
                for p in ("weight", "bias", "running_mean", "running_var"):
                    t = getattr(bn, p)
                    if t is not None:
                        _set_param(bn, p, t[idx.to(t.device)])
                bn.num_features = idx.numel()
        for cons in consumers:
            layer = modules[cons.name]
            size = layer.in_channels if cons.kind == "conv" else layer.in_features
            mask = reads.setdefault(cons.name, torch.ones(size, dtype=torch.bool))
            mask[cons.offset * cons.hw:(cons.offset + keep.numel()) * cons.hw] = keep.repeat_interleave(cons.hw)
    for name, mask in reads.items():
        layer = modules[name]
        idx = mask.nonzero().flatten().to(layer.weight.device)
        _set_param(layer, "weight", layer.weight[:, idx])
        if isinstance(layer, nn.Conv2d):
            layer.in_channels = idx.numel()
        else:
            layer.in_features = idx.numel()
    return new.eval()


def compacted_widths(model: nn.Module, cmask: Mapping[str, Tensor]) -> dict[str, int]:
    """Output channels each prunable conv keeps after :func:`compact` (for reports)."""
    validate_channel_mask(model, cmask)
    return {k: int(v.sum()) for k, v in cmask.items()}


def load_compacted(model: nn.Module, cmask: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> nn.Module:
    """Rebuild a stored compacted model: ``compact(model, cmask)`` then a strict ``load_state_dict(state)``.

    ``model`` is a freshly built dense model of the same architecture (its
    weights do not matter); ``cmask`` the channel mask the state was compacted
    with. Returns the loaded compacted model in eval mode.
    """
    small = compact(model, cmask)
    small.load_state_dict(dict(state), strict=True)
    return small.eval()
