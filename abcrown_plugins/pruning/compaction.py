"""Physical compaction: a channel-pruned model rebuilt with fewer channels.

``compact(model, cmask)`` returns a new model of the same module types whose
pruned output channels are gone: from each prunable conv (weight rows, bias)
and its BatchNorm (weight, bias, running_mean, running_var), from the input
channels of every conv that reads them, and from the input features of the
Linear after Flatten (channel ``c`` of a ``C x H x W`` map occupies features
``c*H*W .. (c+1)*H*W - 1``). Residual adds are handled through the coupled
groups of :func:`abcrown_plugins.pruning.channels.channel_graph`
(``model_zoo.BasicBlock``: ``conv2``, ``bn2`` and the shortcut conv+bn share the
block's output channels; an identity shortcut ties them to the block input's).

Contract: in eval mode, ``compact(model, cmask)(x)`` equals the *masked* model
(``channel_to_weight_mask(model, cmask).apply_(model)``) up to float rounding,
because a masked channel is exactly 0 after its BatchNorm, stays 0 through
ReLU, pooling and a residual add of two pruned channels, and so contributes
nothing to the layers that read it.

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
from torch import Tensor, nn

from abcrown_plugins.pruning.channels import channel_graph, validate_channel_mask


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
    validate_channel_mask(model, cmask)
    graph = channel_graph(model)
    new = copy.deepcopy(model)
    modules = dict(new.named_modules())
    for group, consumers in zip(graph.groups, graph.consumers):
        keep = cmask[group[0]].detach().cpu()
        if bool(keep.all()):
            continue
        for conv_name in group:
            conv, bn = modules[conv_name], modules[graph.bn[conv_name]]
            idx = keep.nonzero().flatten().to(conv.weight.device)
            _set_param(conv, "weight", conv.weight[idx])
            _set_param(conv, "bias", conv.bias[idx] if conv.bias is not None else None)
            conv.out_channels = idx.numel()
            for p in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(bn, p)
                if t is not None:
                    _set_param(bn, p, t[idx.to(t.device)])
            bn.num_features = idx.numel()
        for cons in consumers:
            layer = modules[cons.name]
            idx = keep.nonzero().flatten()
            if cons.kind == "conv":
                _set_param(layer, "weight", layer.weight[:, idx.to(layer.weight.device)])
                layer.in_channels = idx.numel()
            else:  # the Linear after Flatten: channel c covers features c*hw .. (c+1)*hw - 1
                feat = (idx.view(-1, 1) * cons.hw + torch.arange(cons.hw).view(1, -1)).flatten()
                _set_param(layer, "weight", layer.weight[:, feat.to(layer.weight.device)])
                layer.in_features = feat.numel()
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
