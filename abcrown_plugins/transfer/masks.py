"""Masks of sparse deltas (DiffPruning): which parameter entries a downstream task may change.

The fine-tuned network is ``weights = pretrained + delta`` with ``delta`` zero
outside a boolean mask. Entries are grouped into *units* that are switched on
and off together:

* ``unstructured``: every entry is its own unit;
* ``structured``: one unit per output channel of a layer: the conv filter (or
  Linear row), its bias entry, and the entries of the BatchNorm that normalises
  that channel (gamma, beta);
* ``groupwise``: dense blocks of ``group_out`` output x ``group_in`` input
  channels (times the whole kernel) of each weight, and blocks of ``group_out``
  channels of each bias / BatchNorm; blocks are picked where the unstructured
  top-k mask is densest (seed 000, appendix A.1), so the count stays k.

The updated-parameter ratio ``k`` counts every parameter except the final
classifier, which is re-initialised and always dense (``True`` in the mask).
A :class:`UnitLayout` maps every entry to its unit; :func:`select_units` picks
units greedily by score without exceeding ``round(k * total)``, so the count is
within one unit (one parameter, one channel, one block) of the target.
Masks are plain ``{param name: bool tensor}`` covering *every* parameter.

Verification-aware allocation: a frozen prefix of layers gets no units, so
its outputs equal the base network's bit for bit and a differential certifier
reuses them (:mod:`abcrown_plugins.differential`). :func:`verification_aware_prefix`
gives the longest prefix whose later layers still hold the budget k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from abcrown_plugins.errors import UserError
from abcrown_plugins.pruning.flops import layer_macs

__all__ = ["PATTERNS", "UnitLayout", "build_mask", "classifier_names", "layer_order", "mask_count",
           "prefix_mac_fraction", "select_units", "unit_layout", "verification_aware_prefix"]

PATTERNS = ("unstructured", "structured", "groupwise")


def layer_order(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Parametrised leaf layers (Conv2d, Linear, BatchNorm) in module (= forward) order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d))]


def classifier_names(model: nn.Module) -> list[str]:
    """Parameter names of the final classifier (the last Linear, which must be the last parametrised layer)."""
    layers = layer_order(model)
    if not layers or not isinstance(layers[-1][1], nn.Linear):
        raise UserError("sparse transfer needs a model whose last parametrised layer is the Linear classifier")
    name, lin = layers[-1]
    return [f"{name}.{p}" for p, _ in lin.named_parameters()]


@dataclass
class UnitLayout:
    """Entry -> unit map of one model and pattern.

    Attributes:
        unit_of: ``{param name: int64 tensor of the parameter's shape}``; the unit
            index of every entry, ``-1`` for entries outside every unit (the
            classifier and any frozen prefix).
        size: ``int64`` (units,) number of entries per unit.
        pool: ``int64`` (units,) pool id; units of one pool have the same size and
            layer, so swapping units inside a pool keeps the count exact (RigL).
        layer: ``int64`` (units,) index into :func:`layer_order` of the unit's layer.
        total: Parameters counted by the ratio k (all but the classifier).
        bn_gamma: ``{unit: (param name, index)}`` of the BatchNorm gamma entry of a
            structured unit (RigL's channel criterion), when it has one.
    """

    pattern: str
    unit_of: dict[str, Tensor]
    size: Tensor
    pool: Tensor
    layer: Tensor
    total: int
    bn_gamma: dict[int, tuple[str, int]]

    @property
    def num_units(self) -> int:
        return int(self.size.numel())

    def unit_scores(self, entry_scores: dict[str, Tensor]) -> Tensor:
        """Mean entry score per unit (float64, (units,))."""
        acc = torch.zeros(self.num_units, dtype=torch.float64)
        for name, ids in self.unit_of.items():
            keep = ids >= 0
            if keep.any():
                acc.index_add_(0, ids[keep], entry_scores[name].detach().double().cpu()[keep])
        return acc / self.size.clamp(min=1).double()

    def mask_from_units(self, selected: Tensor, params: dict[str, Tensor], classifier: list[str]) -> dict[str, Tensor]:
        """Bool mask of every parameter from a bool (units,) selection; classifier entries True."""
        out = {}
        for name, p in params.items():
            if name in classifier:
                out[name] = torch.ones(p.shape, dtype=torch.bool)
                continue
            ids = self.unit_of[name]
            m = torch.zeros(p.shape, dtype=torch.bool)
            keep = ids >= 0
            m[keep] = selected[ids[keep]]
            out[name] = m
        return out

    def units_from_mask(self, mask: dict[str, Tensor]) -> Tensor:
        """Bool (units,) of the units whose entries are set in ``mask`` (all-or-nothing per unit)."""
        hits = torch.zeros(self.num_units, dtype=torch.int64)
        for name, ids in self.unit_of.items():
            keep = ids >= 0
            if keep.any():
                hits.index_add_(0, ids[keep], mask[name][keep].long())
        return hits == self.size


def _bn_links(layers: list[tuple[str, nn.Module]]) -> dict[str, str]:
    """BatchNorm name -> the Conv2d/Linear it directly follows (same channel count)."""
    links, prev = {}, None
    for name, m in layers:
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if prev is not None and _out_channels(prev[1]) == m.num_features:
                links[name] = prev[0]
            prev = None
        else:
            prev = (name, m)
    return links


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def unit_layout(model: nn.Module, pattern: str, frozen_prefix: int = 0,
                group_shape: tuple[int, int] = (4, 4)) -> UnitLayout:
    """The units of ``pattern`` over ``model``'s parameters (module docstring).

    ``frozen_prefix`` leading layers of :func:`layer_order` (a BatchNorm counts
    with the layer it follows) get no units, so no update can reach them.
    """
    if pattern not in PATTERNS:
        raise UserError(f"unknown sparsity pattern '{pattern}'; valid: {', '.join(PATTERNS)}")
    go, gi = int(group_shape[0]), int(group_shape[1])
    if go < 1 or gi < 1:
        raise UserError(f"transfer.group_shape must be two positive integers, got {list(group_shape)}")
    layers = layer_order(model)
    classifier = set(classifier_names(model))
    links = _bn_links(layers)
    # layer index of each layer; a linked BatchNorm shares its conv's index
    index, k = {}, 0
    for name, m in layers:
        if name in links:
            index[name] = index[links[name]]
        else:
            index[name] = k
            k += 1
    params = dict(model.named_parameters())
    unit_of = {n: torch.full(p.shape, -1, dtype=torch.int64) for n, p in params.items()}
    sizes: list[int] = []
    pools: list[int] = []
    layer_ids: list[int] = []
    pool_key: dict[tuple, int] = {}
    bn_gamma: dict[int, tuple[str, int]] = {}
    channel_units: dict[str, Tensor] = {}  # structured: layer name -> unit id per output channel

    def new_units(count: int, size: int, layer: int, key: tuple) -> Tensor:
        start = len(sizes)
        pid = pool_key.setdefault((layer, size, *key), len(pool_key))
        sizes.extend([size] * count)
        pools.extend([pid] * count)
        layer_ids.extend([layer] * count)
        return torch.arange(start, start + count)

    for name, m in layers:
        li = index[name]
        names = [f"{name}.{p}" for p, _ in m.named_parameters(recurse=False)]
        if li < frozen_prefix or any(n in classifier for n in names):
            continue
        is_bn = isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
        if pattern == "unstructured":
            for n in names:
                p = params[n]
                unit_of[n] = new_units(p.numel(), 1, li, (n,)).view(p.shape)
        elif pattern == "structured":
            if is_bn and name in links:
                ids = channel_units[links[name]]
            else:
                ids = None
            for n in names:
                p = params[n]
                per_channel = p[0].numel() if p.dim() > 1 else 1
                if ids is None:
                    ids = new_units(p.shape[0], 0, li, ("ch",))
                    channel_units[name] = ids
                view = (-1,) + (1,) * (p.dim() - 1)
                unit_of[n] = ids.view(view).expand(p.shape).clone()
                for u in ids.tolist():
                    sizes[u] += per_channel
                if is_bn and n.endswith(".weight"):
                    for c, u in enumerate(ids.tolist()):
                        bn_gamma[u] = (n, c)
        else:  # groupwise
            for n in names:
                p = params[n]
                out_blocks = -(-p.shape[0] // go)
                if p.dim() >= 2:
                    in_blocks = -(-p.shape[1] // gi)
                    grid = torch.empty(out_blocks, in_blocks, dtype=torch.int64)
                    for bo in range(out_blocks):
                        for bi in range(in_blocks):
                            ro = min(go, p.shape[0] - bo * go)
                            ri = min(gi, p.shape[1] - bi * gi)
                            size = ro * ri * (p[0, 0].numel())
                            grid[bo, bi] = new_units(1, size, li, (n, ro, ri))[0]
                    o = torch.arange(p.shape[0]) // go
                    i = torch.arange(p.shape[1]) // gi
                    ids = grid[o][:, i]
                    unit_of[n] = ids.view(ids.shape + (1,) * (p.dim() - 2)).expand(p.shape).clone()
                else:
                    ids = torch.empty(out_blocks, dtype=torch.int64)
                    for bo in range(out_blocks):
                        ro = min(go, p.shape[0] - bo * go)
                        ids[bo] = new_units(1, ro, li, (n, ro))[0]
                    unit_of[n] = ids[torch.arange(p.shape[0]) // go]
    size = torch.tensor(sizes, dtype=torch.int64)
    pool = torch.tensor(pools, dtype=torch.int64)
    if pattern == "structured" and len(sizes):
        # pool = (layer, channel size): all channels of a layer have one size
        keys = {}
        pool = torch.tensor([keys.setdefault((layer_ids[u], sizes[u]), len(keys)) for u in range(len(sizes))])
    total = sum(p.numel() for n, p in params.items() if n not in classifier)
    return UnitLayout(pattern, unit_of, size, pool, torch.tensor(layer_ids, dtype=torch.int64), total, bn_gamma)


def verification_aware_prefix(model: nn.Module, pattern: str, k: float, group_shape: tuple[int, int] = (4, 4)) -> int:
    """The largest ``frozen_prefix`` whose unfrozen layers still hold ``round(k * total)`` parameters of ``pattern``.

    Layers as :func:`unit_layout` counts them (a BatchNorm with the layer it
    follows; the classifier is never frozen nor counted). 0 when even the whole
    network is needed. The longest shared prefix is what the differential engine
    reuses; the cost is that the first layers cannot adapt to the new task.
    """
    layout = unit_layout(model, pattern, 0, group_shape)
    budget = int(round(k * layout.total))
    if layout.num_units == 0:
        return 0
    best = 0
    for f in range(int(layout.layer.max()) + 1):
        if int(layout.size[layout.layer >= f].sum()) >= budget:
            best = f
    return best


def select_units(scores: Tensor, sizes: Tensor, budget: int) -> Tensor:
    """Greedy: units in descending score, each taken if it still fits in ``budget`` entries.

    Returns a bool (units,) selection with ``sum(size) <= budget`` and, when
    some unit is left out, ``budget - sum(size) <`` the size of the largest
    unit left out (for unstructured units: exactly ``budget``).
    """
    order = torch.argsort(scores, descending=True, stable=True)
    selected = torch.zeros(scores.numel(), dtype=torch.bool)
    if order.numel() == 0 or budget <= 0:
        return selected
    sorted_sizes = sizes[order]
    cums = torch.cumsum(sorted_sizes, 0)
    j = int((cums <= budget).sum())  # the longest prefix that fits
    selected[order[:j]] = True
    room = budget - (int(cums[j - 1]) if j > 0 else 0)
    rest = order[j:]
    for u, s in zip(rest.tolist(), sizes[rest].tolist()):
        if room == 0:
            break
        if s <= room:
            selected[u] = True
            room -= s
    return selected


def mask_count(mask: dict[str, Tensor], classifier: list[str]) -> int:
    """Number of updated entries outside the classifier."""
    return int(sum(int(v.sum()) for n, v in mask.items() if n not in classifier))


def build_mask(model: nn.Module, layout: UnitLayout, entry_scores: dict[str, Tensor], k: float) -> dict[str, Tensor]:
    """The mask of ratio ``k`` (of ``layout.total``) choosing the highest-scoring units.

    ``entry_scores``: non-negative score per entry (e.g. ``|grad|``), every parameter.
    For ``groupwise`` a block's score is the fraction of its entries in the
    unstructured top-k mask (the dense blocks of seed 000, A.1), ties by mean score.
    """
    if not 0 < k <= 1:
        raise UserError(f"updated-parameter ratio k must lie in (0, 1], got {k}")
    budget = int(round(k * layout.total))
    candidates = int(layout.size.sum())
    if budget > candidates:
        raise UserError(f"ratio k={k:g} asks for {budget} updated parameters but only {candidates} are not frozen; "
                        f"lower transfer.frozen_prefix or k")
    params = dict(model.named_parameters())
    classifier = classifier_names(model)
    unit_scores = layout.unit_scores(entry_scores)
    if layout.pattern == "groupwise":
        flat = torch.cat([entry_scores[n].detach().double().cpu().flatten()[layout.unit_of[n].flatten() >= 0]
                          for n in layout.unit_of])
        if budget > 0 and flat.numel():
            threshold = torch.topk(flat, budget).values[-1]
            dense = {n: (entry_scores[n].detach().double().cpu() >= threshold).double() for n in layout.unit_of}
            density = layout.unit_scores(dense)
            top = unit_scores.max().clamp(min=1e-300)
            unit_scores = density + 1e-3 * unit_scores / top
    selected = select_units(unit_scores, layout.size, budget)
    return layout.mask_from_units(selected, params, classifier)


def prefix_mac_fraction(model: nn.Module, masks: dict[str, Tensor], input_shape: tuple[int, ...]) -> float:
    """Share of the multiply-accumulates of Conv2d/Linear layers that run before the first updated layer.

    Layers are taken in :func:`layer_order`; a layer is updated when any entry of
    its (or its BatchNorm's) parameters is True in ``masks``. Their outputs equal
    the base network's bit for bit, so a differential verifier can reuse them.
    MACs as :func:`abcrown_plugins.pruning.flops.layer_macs` counts them.
    """
    macs = layer_macs(model, tuple(input_shape))
    prefix = 0
    for name, m in layer_order(model):
        if any(bool(masks[f"{name}.{p}"].any()) for p, _ in m.named_parameters(recurse=False)):
            break
        prefix += macs.get(name, 0)
    return prefix / max(sum(macs.values()), 1)
