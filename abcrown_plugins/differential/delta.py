"""What a fine-tuned network changed relative to its pretrained base.

A downstream ("fine-tuned") network has the base's architecture; some of its
parameters differ by a sparse delta (DiffPruning, seed 000 section 3), and the
final classifier may be re-initialised with another class count. The
differential engine needs, per module, *which output channels* changed:

- ``Conv2d``/``Linear``: rows (output channels / features) whose weight row or
  bias entry differs in any bit;
- ``BatchNorm`` (eval mode): channels whose weight, bias, running mean or
  running variance differs;
- anything else that differs in a parameter or buffer, or whose shapes differ
  (a new classifier), is *replaced*: the engine recomputes it densely.

Equality is bitwise (``!=`` on the stored float32 values): an entry with a zero
delta is unchanged, anything else is changed. :func:`module_changes` is exact
in that sense; it never approximates.

:func:`random_finetuned` makes random fine-tuned networks with the seed's three
sparsity patterns (appendix A.1) for tests and benchmarks:

- ``unstructured``: any weight may change;
- ``structured``: whole output channels (filters) change;
- ``groupwise``: dense tiles of ``group x group`` (output, input) kernel pairs change.

``density`` k is the fraction of conv weights changed (over all conv layers);
``allocation`` spreads it evenly over the layers (``uniform``) or fills the
budget from the last conv layer backwards (``late``, the verification-aware
allocation: it leaves the longest unchanged prefix to share).
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from abcrown_plugins.errors import UserError

PATTERNS = ("unstructured", "structured", "groupwise")
ALLOCATIONS = ("uniform", "late")


@dataclass(frozen=True)
class Change:
    """How one module of a fine-tuned network differs from the base.

    ``kind``: ``"rows"`` (Conv2d/Linear/BatchNorm: only the output channels in
    ``rows`` differ, a sorted int64 tensor) or ``"replaced"`` (recompute densely).
    """

    kind: str
    rows: Tensor | None = None

    @property
    def num_rows(self) -> int:
        return 0 if self.rows is None else int(self.rows.numel())


def _choose(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        close = difflib.get_close_matches(value, list(valid), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown {name} '{value}'{hint} (valid: {', '.join(valid)})")
    return value


def _own_tensors(m: nn.Module) -> dict[str, Tensor]:
    """Parameters and persistent buffers of ``m`` itself (derived, non-persistent buffers follow them)."""
    return {k: v for k, v in m.state_dict(keep_vars=True).items() if "." not in k and v is not None}


def _rows_changed(base: nn.Module, tuned: nn.Module) -> Tensor | None:
    """Rows (dim 0) where any own tensor differs; None if shapes or tensor sets differ."""
    tb, tt = _own_tensors(base), _own_tensors(tuned)
    if set(tb) != set(tt):
        return None
    n = None
    changed = None
    for k, vb in tb.items():
        vt = tt[k]
        if vb.shape != vt.shape or vb.dtype != vt.dtype:
            return None
        if vb.dim() == 0:  # e.g. num_batches_tracked: irrelevant in eval mode
            continue
        if n is None:
            n = vb.shape[0]
            changed = torch.zeros(n, dtype=torch.bool, device=vb.device)
        if vb.shape[0] != n:
            return None
        changed |= (vb != vt).reshape(n, -1).any(dim=1)
    if changed is None:
        return torch.zeros(0, dtype=torch.long)
    return changed.nonzero().flatten().cpu()


def _same_config(base: nn.Module, tuned: nn.Module) -> bool:
    if type(base) is not type(tuned):
        return False
    if isinstance(base, nn.Conv2d):
        keys = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                "padding_mode")
    elif isinstance(base, nn.Linear):
        keys = ("in_features", "out_features")
    elif isinstance(base, nn.modules.batchnorm._BatchNorm):
        keys = ("num_features", "eps", "track_running_stats", "affine")
    else:
        return True
    return all(getattr(base, k) == getattr(tuned, k) for k in keys) and \
        ((getattr(base, "bias", None) is None) == (getattr(tuned, "bias", None) is None))


def module_changes(base: nn.Module, tuned: nn.Module) -> dict[str, Change]:
    """``{module path: Change}`` for every module of ``tuned`` that differs from ``base``.

    Paths are ``named_modules`` names. Only modules that own parameters or
    buffers are compared; a container is changed iff a descendant is (callers
    check descendants). Raises UserError when the two networks' module trees
    differ in anything but leaf shapes (a different architecture).
    """
    mb, mt = dict(base.named_modules()), dict(tuned.named_modules())
    if any(isinstance(m, fx.GraphModule) for m in (*mb.values(), *mt.values())):
        raise UserError("the differential engine knows the zoo's module layouts; an imported network "
                        "(onnx:, python:) is certified with the dense engine (smoothing.engine dense)")
    if set(mb) != set(mt):
        extra = sorted(set(mb) ^ set(mt))[:3]
        raise UserError(f"fine-tuned network's modules differ from the base's (e.g. {extra}); "
                        f"the differential engine needs the same architecture")
    out: dict[str, Change] = {}
    for path, b in mb.items():
        t = mt[path]
        if type(b) is not type(t):
            raise UserError(f"module '{path}' is {type(t).__name__} in the fine-tuned network but "
                            f"{type(b).__name__} in the base")
        if not _own_tensors(b) and not _own_tensors(t):
            continue
        if not _same_config(b, t):
            out[path] = Change("replaced")
            continue
        rows = _rows_changed(b, t)
        if rows is None:
            out[path] = Change("replaced")
        elif rows.numel():
            rowwise = isinstance(b, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm))
            out[path] = Change("rows", rows) if rowwise else Change("replaced")
    return out


# ---------------------------------------------------------------------------------------------
# random fine-tuned networks (tests, benchmarks)


def _conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _layer_budgets(sizes: list[int], density: float, allocation: str) -> list[float]:
    """Per-layer densities whose weighted mean is ``density``."""
    if allocation == "uniform":
        return [density] * len(sizes)
    budget = density * sum(sizes)
    out = [0.0] * len(sizes)
    for i in reversed(range(len(sizes))):
        take = min(budget, sizes[i])
        out[i] = take / sizes[i]
        budget -= take
    return out


def _layer_mask(w: Tensor, pattern: str, k: float, group: int, g: torch.Generator) -> Tensor:
    cout, cin = w.shape[0], w.shape[1]
    if k <= 0:
        return torch.zeros_like(w, dtype=torch.bool)
    if pattern == "unstructured":
        n = round(k * w.numel())
        flat = torch.zeros(w.numel(), dtype=torch.bool)
        flat[torch.randperm(w.numel(), generator=g)[:n]] = True
        return flat.view_as(w)
    if pattern == "structured":
        n = max(1, round(k * cout))
        m = torch.zeros(cout, dtype=torch.bool)
        m[torch.randperm(cout, generator=g)[:n]] = True
        return m.view(-1, *([1] * (w.dim() - 1))).expand_as(w).clone()
    go, gi = min(group, cout), min(group, cin)
    nbo, nbi = -(-cout // go), -(-cin // gi)
    n = max(1, round(k * nbo * nbi))
    blocks = torch.zeros(nbo * nbi, dtype=torch.bool)
    blocks[torch.randperm(nbo * nbi, generator=g)[:n]] = True
    tile = blocks.view(nbo, nbi).repeat_interleave(go, 0).repeat_interleave(gi, 1)[:cout, :cin]
    return tile.view(cout, cin, *([1] * (w.dim() - 2))).expand_as(w).clone()


def random_finetuned(base: nn.Module, pattern: str, density: float, *, allocation: str = "uniform",
                     num_classes: int | None = None, scale: float = 0.1, change_bn: bool = False,
                     group: int = 4, generator: torch.Generator | None = None) -> tuple[nn.Module, float]:
    """A copy of ``base`` with a random sparse delta on its conv weights and a new classifier.

    Returns ``(finetuned, achieved_density)``. The delta on a chosen weight is
    ``scale * std(layer weights) * N(0,1)``; ``change_bn`` also perturbs the
    BatchNorm statistics of changed output channels. The last ``nn.Linear`` is
    replaced by a freshly initialised one with ``num_classes`` outputs (default:
    the base's). The result is in eval mode.
    """
    _choose("sparsity pattern", pattern, PATTERNS)
    _choose("allocation", allocation, ALLOCATIONS)
    if not 0.0 <= density <= 1.0:
        raise UserError(f"density must be in [0, 1], got {density}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    tuned = copy.deepcopy(base).eval()
    convs = _conv_layers(tuned)
    sizes = [m.weight.numel() for _, m in convs]
    changed = 0
    modules = dict(tuned.named_modules())
    names = list(modules)
    with torch.no_grad():
        for (name, conv), k in zip(convs, _layer_budgets(sizes, density, allocation)):
            mask = _layer_mask(conv.weight, pattern, k, group, g)
            changed += int(mask.sum())
            std = float(conv.weight.std()) or 1.0
            conv.weight += mask * (scale * std) * torch.randn(conv.weight.shape, generator=g)
            if change_bn:
                rows = mask.reshape(mask.shape[0], -1).any(1)
                nxt = names[names.index(name) + 1] if names.index(name) + 1 < len(names) else None
                bn = modules.get(nxt)
                if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats:
                    bn.running_mean += rows * 0.1 * torch.randn(bn.num_features, generator=g)
                    bn.weight += rows * 0.1 * torch.randn(bn.num_features, generator=g)
        linears = [(n, m) for n, m in tuned.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            path, old = linears[-1]
            new = nn.Linear(old.in_features, num_classes or old.out_features)
            bound = 1.0 / old.in_features ** 0.5
            new.weight.copy_((torch.rand(new.weight.shape, generator=g) * 2 - 1) * bound)
            new.bias.copy_((torch.rand(new.bias.shape, generator=g) * 2 - 1) * bound)
            _set_module(tuned, path, new)
    return tuned.eval(), changed / max(sum(sizes), 1)


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


@torch.no_grad()
def center_classifier(model: nn.Module, inputs: Tensor) -> None:
    """Re-bias and rescale the last ``nn.Linear`` so its logits on ``inputs`` have zero mean per class
    and unit standard deviation overall (in place).

    Random networks tend to predict one class everywhere (post-ReLU features share
    a large common component); centring makes predictions vary under noise, which
    tests and benchmarks of argmax counts need to be meaningful.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("center_classifier needs a model whose last layer is an nn.Linear")
    last = linears[-1]
    seen: list[Tensor] = []
    handle = last.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        model(inputs)
    finally:
        handle.remove()
    feats = seen[0]
    logits = feats @ last.weight.T
    scale = float((logits - logits.mean(0)).std()) or 1.0
    last.weight /= scale
    last.bias.copy_(-(feats @ last.weight.T).mean(0))


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, inputs: Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``inputs``' activations (in place; eval after).

    Affine parameters are kept. A random network whose statistics match its
    activations keeps activations of unit scale through depth, so its outputs
    vary under input noise as a trained network's do (tests, benchmarks).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics exactly
        m.train()
    try:
        model(inputs)
    finally:
        for m, (mom, _) in zip(bns, saved):
            m.momentum = mom
        model.eval()
