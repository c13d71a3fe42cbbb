"""Channel coupling and compaction: the fx rule walk (kept) against Torch-Pruning's DependencyGraph.

    flock /tmp/abcrown_bench.lock python tools/bench_channels.py [--reps 7] [--threads 1]

Two implementations of the same contract, on the same networks:

* ``fx``: :func:`abcrown_plugins.pruning.channels.channel_graph` (a ``torch.fx`` trace, one
  rule per operation kind, union-find of coupled spaces) and
  :func:`abcrown_plugins.pruning.compaction.compact`;
* ``tp``: VainF Torch-Pruning's ``DependencyGraph`` (PyPI ``torch-pruning``): for every
  Conv2d, ``get_pruning_group(conv, prune_conv_out_channels, [i])`` lists the coupled
  layers; a group is kept when it satisfies the same semantics (every member conv is
  followed directly by an affine BatchNorm2d, every other op on the path is zero-preserving,
  the network input and output are not in it, the index mapping is the identity);
  compaction prunes a deep copy through the DependencyGraph. Skipped when
  ``torch_pruning`` is not installed (``pip install --no-deps torch-pruning``).

Networks: the four zoo networks (3 x 32 x 32, mean 0.5, std 0.25) and ``CatNet``
(concatenations, grouped and depthwise convs, max pooling, a residual add, cat -> flatten ->
Linear; tests/pruning/test_channels_nets.py), each as built (``module``), as an
``fx.GraphModule`` (``fx``: ``torch.fx`` trace, Normalize a leaf) and imported from ONNX by
:func:`abcrown_plugins.graph.import_onnx` (``onnx``: exported with BatchNorm kept).

Per network and implementation: prunable convs and groups, the max abs difference of the
compacted network against the masked one (eval mode, a random mask keeping half of every
group's channels, 16 random inputs; ``None`` when compaction raised), parameters before and
after, and the medians (with min and max) of interleaved repetitions of reading the groups
and of compacting; for ``tp`` also ``broken_by_own_pruning``: the convs for which
Torch-Pruning's own, unfiltered pruning of one channel (its whole group) leaves a network
that no longer runs. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import model_zoo
from abcrown_plugins.pruning.channels import channel_graph, channel_to_weight_mask
from abcrown_plugins.pruning.compaction import compact

_spec = importlib.util.spec_from_file_location(
    "channel_test_nets", Path(__file__).resolve().parents[1] / "tests" / "pruning" / "test_channels_nets.py")
_nets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_nets)
CatNet, fx_traced, onnx_graph = _nets.CatNet, _nets.fx_traced, _nets.onnx_graph

ZOO = ["cnn_7layer", "cnn_small", "resnet_small", "resnet18_nr"]

# Torch-Pruning element-wise ops (grad_fn names) that map a zero channel to a zero channel.
_ZERO_GRAD_FNS = {"ReluBackward0", "AddBackward0", "MaxPool2DWithIndicesBackward0", "AvgPool2DBackward0",
                  "AdaptiveAvgPool2DBackward0", "MeanBackward1", "CloneBackward0", "LeakyReluBackward0",
                  "HardtanhBackward0", "TanhBackward0", "TBackward0", "NativeDropoutBackward0"}


# ---------------------------------------------------------------------------------------------
# candidate (A): Torch-Pruning's DependencyGraph

def _dependency_graph(model: nn.Module, shape: tuple[int, ...]):
    import torch_pruning as tp

    was = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=torch.rand(1, *shape), verbose=False)
    finally:
        for m, t in was.items():
            m.train(t)


def tp_groups(model: nn.Module, shape: tuple[int, ...]) -> tuple[list[list[str]], dict[str, str]]:
    """Prunable coupled conv groups and conv -> BatchNorm, read off Torch-Pruning's pruning groups."""
    import torch_pruning as tp
    from torch_pruning import ops

    dg = _dependency_graph(model, shape)
    names = {m: n for n, m in model.named_modules()}
    done: set[str] = set()
    groups, bns = [], {}
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d) or name in done or conv not in dg.module2node:
            continue
        members, ok = None, True
        for probe in sorted({0, conv.out_channels - 1}):
            group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[probe])
            convs, seen_bn = [], []
            for dep, idxs in group:
                mod, out = dep.target.module, dg.is_out_channel_pruning_fn(dep.handler)
                if isinstance(mod, nn.Conv2d) and out:
                    convs.append(names[mod])
                    ok &= list(idxs) == [probe] and mod.out_channels == conv.out_channels
                    ok &= mod.groups == 1 or mod.groups == mod.in_channels == mod.out_channels  # grouped: no
                elif isinstance(mod, nn.BatchNorm2d) and out:
                    seen_bn.append(mod)
                elif isinstance(mod, nn.Conv2d):  # a consumer: only plain convs are sliced here
                    ok &= mod.groups == 1
                elif isinstance(mod, nn.Linear) and not out:
                    pass
                elif isinstance(mod, ops._ElementWiseOp):
                    fn = mod._grad_fn
                    ok &= (fn if isinstance(fn, str) else type(fn).__name__) in _ZERO_GRAD_FNS
                elif isinstance(mod, (ops._ConcatOp, ops._ReshapeOp)):
                    pass
                else:  # output, split, slice, linear outputs, anything else
                    ok = False
            attached = {}
            for bn in seen_bn:
                node = dg.module2node[bn]
                src = node.inputs[0].module if len(node.inputs) == 1 else None
                if bn.affine and isinstance(src, nn.Conv2d) and names[src] in convs:
                    attached[names[src]] = names[bn]
                else:
                    ok = False
            ok &= all(c in attached for c in convs)
            if members is None:
                members = sorted(set(convs), key=list(names.values()).index)
            ok &= sorted(set(convs)) == sorted(members)
            bns.update(attached)
        done.update(members)
        if ok:
            groups.append(members)
    kept = {c for g in groups for c in g}
    return groups, {c: b for c, b in bns.items() if c in kept}


def tp_compact(model: nn.Module, cmask: dict[str, torch.Tensor], shape: tuple[int, ...]) -> nn.Module:
    """Prune a deep copy through the DependencyGraph, one pruning group per coupled conv group."""
    import torch_pruning as tp

    new = copy.deepcopy(model)
    dg = _dependency_graph(new, shape)
    modules = dict(new.named_modules())
    done: set[str] = set()
    for name, keep in cmask.items():
        if name in done:
            continue
        group = dg.get_pruning_group(modules[name], tp.prune_conv_out_channels,
                                     idxs=(~keep.cpu()).nonzero().flatten().tolist())
        done |= {n for n, m in modules.items() if isinstance(m, nn.Conv2d) and any(
            d.target.module is m and dg.is_out_channel_pruning_fn(d.handler) for d, _ in group)}
        if (~keep).any():
            group.prune()
    return new.eval()


def tp_probe(model: nn.Module, shape: tuple[int, ...]) -> list[str]:
    """Convs for which Torch-Pruning's own pruning of channel 0 (its whole group, unfiltered) leaves a
    network that no longer runs."""
    import torch_pruning as tp

    broken = []
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        new = copy.deepcopy(model)
        dg = _dependency_graph(new, shape)
        target = dict(new.named_modules())[name]
        if target not in dg.module2node:
            continue
        try:
            dg.get_pruning_group(target, tp.prune_conv_out_channels, idxs=[0]).prune()
            with torch.no_grad():
                new.eval()(torch.rand(2, *shape))
        except Exception:
            broken.append(name)
    return broken


def half_mask(model: nn.Module, groups: list[list[str]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A random channel mask keeping half of every group's channels (both candidates use it)."""
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        n = modules[g[0]].out_channels
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.randperm(n, generator=gen)[:max(1, n // 2)]] = True
        out.update({c: m.clone() for c in g})
    return out


# ---------------------------------------------------------------------------------------------
# candidate (B): the fx rule walk (the project's)

def fx_groups(model: nn.Module, shape: tuple[int, ...]) -> tuple[list[list[str]], dict[str, str]]:
    g = channel_graph(model)
    return [list(x) for x in g.groups], dict(g.bn)


def fx_compact(model: nn.Module, cmask: dict[str, torch.Tensor], shape: tuple[int, ...]) -> nn.Module:
    return compact(model, cmask)


# ---------------------------------------------------------------------------------------------

def _randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) * 3 - 1.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)


def networks() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    gen = torch.Generator().manual_seed(0)
    base: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    for name in ZOO:
        torch.manual_seed(0)
        m = model_zoo.build_model(name, in_channels=3, input_size=32, num_classes=10, mean=(0.5,) * 3,
                                  std=(0.25,) * 3)
        base.append((name, m, (3, 32, 32)))
    torch.manual_seed(0)
    base.append(("catnet", CatNet(), tuple(CatNet.input_shape)))
    out = []
    for name, m, shape in base:
        _randomize_bn(m, gen)
        m.eval()
        m.input_shape = shape
        out += [(f"{name}/module", m, shape), (f"{name}/fx", fx_traced(m).eval(), shape)]
        try:
            out.append((f"{name}/onnx", onnx_graph(m, shape).eval(), shape))
        except ImportError:  # no importer in this checkout
            pass
    return out


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    res = fn()
    return time.perf_counter() - t, res


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(xs), "min_s": min(xs), "max_s": max(xs)}


def measure(name: str, model: nn.Module, shape: tuple[int, ...], impls: dict[str, tuple], reps: int) -> dict:
    row: dict[str, Any] = {"network": name, "convs": sum(isinstance(m, nn.Conv2d) for m in model.modules())}
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(1))
    state: dict[str, dict] = {}
    for impl, (groups_fn, compact_fn, mask_fn) in impls.items():
        r: dict[str, Any] = {}
        try:
            groups, bns = groups_fn(model, shape)
        except Exception as e:  # a candidate failing on a network is a result
            state[impl] = {"error": f"groups: {type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            continue
        r["groups"] = len(groups)
        r["prunable"] = sum(len(g) for g in groups)
        cmask = mask_fn(model, groups, torch.Generator().manual_seed(2))
        masked = copy.deepcopy(model)
        try:
            channel_to_weight_mask(masked, cmask).apply_(masked)  # the project's mask (fx groups)
        except ValueError:
            _mask_by_hand(masked, cmask, bns)
        try:
            small = compact_fn(model, cmask, shape)
            with torch.no_grad():
                r["max_abs_diff"] = float((small(x) - masked(x)).abs().max())
            r["params"] = [sum(p.numel() for p in model.parameters()), sum(p.numel() for p in small.parameters())]
        except Exception as e:
            r["max_abs_diff"] = None
            r["compact_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        r["_cmask"] = cmask
        state[impl] = r
    times: dict[str, dict[str, list[float]]] = {k: {"groups": [], "compact": []} for k in state
                                                if "error" not in state[k]}
    for _ in range(reps):  # interleaved: A, B, A, B, ...
        for impl in times:
            groups_fn, compact_fn, _ = impls[impl]
            times[impl]["groups"].append(_timed(lambda: groups_fn(model, shape))[0])
            if state[impl].get("max_abs_diff") is not None:
                times[impl]["compact"].append(_timed(lambda: compact_fn(model, state[impl]["_cmask"], shape))[0])
    if "tp" in state and "error" not in state["tp"]:
        state["tp"]["broken_by_own_pruning"] = tp_probe(model, shape)
    for impl, r in state.items():
        r.pop("_cmask", None)
        if impl in times:
            r["groups_time"] = _stats(times[impl]["groups"])
            if times[impl]["compact"]:
                r["compact_time"] = _stats(times[impl]["compact"])
        row[impl] = r
    return row


def _mask_by_hand(model: nn.Module, cmask: dict[str, torch.Tensor], bns: dict[str, str]) -> None:
    """Mask filters and BatchNorm affine parameters of groups the project's graph does not have."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for c, keep in cmask.items():
            conv, bn = modules[c], modules[bns[c]]
            conv.weight[~keep] = 0
            if conv.bias is not None:
                conv.bias[~keep] = 0
            bn.weight[~keep] = 0
            bn.bias[~keep] = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions per timing")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    impls: dict[str, tuple] = {"fx": (fx_groups, fx_compact, half_mask)}
    try:
        import torch_pruning

        impls["tp"] = (tp_groups, tp_compact, half_mask)
        tp_version = torch_pruning.__version__
    except ImportError:
        tp_version = None
    rows = []
    for name, model, shape in networks():
        row = measure(name, model, shape, impls, args.reps)
        rows.append(row)
        cells = []
        for impl in impls:
            r = row.get(impl, {})
            if "error" in r:
                cells.append(f"{impl}: {r['error'][:60]}")
                continue
            d = r.get("max_abs_diff")
            cells.append(f"{impl}: {r['prunable']:2d} convs/{r['groups']:2d} groups diff "
                         f"{'FAIL' if d is None else f'{d:.1e}'} groups {r['groups_time']['median_s'] * 1e3:6.1f} ms"
                         + (f" compact {r['compact_time']['median_s'] * 1e3:6.1f} ms" if "compact_time" in r else "")
                         + (f" own pruning breaks {','.join(r['broken_by_own_pruning'])}"
                            if r.get("broken_by_own_pruning") else ""))
        print(f"{name:22s} " + " | ".join(cells), flush=True)
    summary: dict[str, Any] = {}
    for impl in impls:
        ok = [r[impl] for r in rows if impl in r and "error" not in r[impl]]
        correct = [r for r in ok if r.get("max_abs_diff") is not None and r["max_abs_diff"] <= 1e-4]
        summary[impl] = {
            "networks_correct": len(correct), "networks": len(rows),
            "prunable_convs": sum(r["prunable"] for r in ok),
            "max_abs_diff": max((r["max_abs_diff"] for r in ok if r.get("max_abs_diff") is not None), default=None),
            "groups_time_total_median_s": sum(r["groups_time"]["median_s"] for r in ok),
            "compact_time_total_median_s": sum(r["compact_time"]["median_s"] for r in ok if "compact_time" in r),
        }
        if impl == "tp":
            summary[impl]["networks_broken_by_own_pruning"] = sum(bool(r.get("broken_by_own_pruning")) for r in ok)
    print(json.dumps({"bench": "channels", "torch": torch.__version__, "torch_pruning": tp_version,
                      "python": platform.python_version(), "threads": args.threads, "reps": args.reps,
                      "summary": summary, "rows": rows}))


if __name__ == "__main__":
    main()
