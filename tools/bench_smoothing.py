"""Benchmark of the exact sparse differential engine for randomized smoothing; last line: one JSON object.

    flock /tmp/abcrown_bench.lock python tools/bench_smoothing.py [--n 1000] [--batch-size 200]
        [--ks 1,8,64] [--models cnn_7layer,resnet18_nr] [--tasks 10] [--threads 1] [--reps 5]
        [--out results/bench_smoothing]

Every timed figure is the median over ``--reps`` interleaved repetitions (one round
times each compared computation once, the order rotating from round to round, so
host load drifts over all of them alike); its ``*_spread`` field is ``[min, max]``
over the repetitions (for a ratio: of the per-round ratios).

For each model, sparsity pattern (unstructured, structured, groupwise), updated
ratio k and mask allocation, a fine-tuned network is made from the base with
the transfer package's DiffPruning masks (``unit_layout`` + ``build_mask``,
random unit scores, random delta values, new centred classifier):
``uniform`` = no frozen prefix; ``verification-aware`` = the largest
``frozen_prefix`` whose layers still hold the k budget (the option that
maximises the reusable prefix). Weights are random (no trained checkpoints are
shipped); BatchNorm statistics are calibrated on noisy inputs and the
classifier is centred so that predictions vary under noise as a trained
network's do.

Timed on the same image, the same noise (same generator seed) and the same n:

- ``dense``: ``sample_counts`` of the dense fine-tuned network (the certifier's
  estimation step);
Allocation ``conv-late`` is the seed's setting instead: deltas on conv weights
only (k of the conv weights, filled from the last conv layer backwards, with
the BatchNorm of changed channels), fully connected layers as in the base
except the new classifier (``abcrown_plugins.differential.random_finetuned``).

- ``trace``: the engine replaying a base trace (the base's activations on that
  noise, recorded once while certifying the base: seed 000's "reuse the
  pre-training verification results"); ``speedup`` = dense / trace replay;
- ``live``: the engine alone for this one network, base prefix recomputed
  (``speedup_live``);
- multi-task: T networks (structured, k = 8 %, verification-aware, each its own
  delta and classifier) by T dense runs vs one shared pass
  (``multitask_speedup``);
- ``dense_overhead``: ``certify`` of the dense base / raw batched forward
  passes over the same (pre-drawn) noisy inputs, median of at least 3 interleaved runs;
- ``break_even``: fraction of output (``rows``) or input (``inputs``) channels
  at which a channel-subset convolution of cnn_7layer's largest layer stops
  being faster than the dense one; and the unstructured 1 % sparse product
  (im2col + CSR) against the dense convolution.

Every count is compared with the dense one (``exact``), and the engine's raw
logits (guard off) with the dense logits on one noise batch (``max_abs_diff``).
Writes ``table.md`` (seed 000 Table 1/3 form: time saved per pattern and k)
and ``results.json`` into ``--out``.

With ``--transfer RUN_DIR`` it instead re-times the *trained* sparse networks of
a finished ``abcrown-plugins transfer`` run (its config, checkpoints and base):
``--reps`` repetitions, each certifying the run's examples densely and
through the engine side by side
(``abcrown_plugins.differential.certify_compared``, the accountings rotating
from example to example, into a scratch folder); it reports per network the
median over repetitions of the time saved live and trace, and of the group's
multi-task time saved, and checks that every repetition's certificates equal
the run's own ``certify.tsv`` rows.

    flock /tmp/abcrown_bench.lock python tools/bench_smoothing.py --transfer results/transfer_cpu --reps 3
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import model_zoo
from abcrown_plugins.data import load_dataset
from abcrown_plugins.differential import BREAK_EVEN, DifferentialEngine, random_finetuned
from abcrown_plugins.differential.certify import multitask_counts, record_trace, trace_counts
from abcrown_plugins.differential.delta import calibrate_batchnorm, center_classifier
from abcrown_plugins.report import markdown_table, write_markdown
from abcrown_plugins.runtime import set_progress
from abcrown_plugins.smoothing.certify import certify, noise_batches, sample_counts
from abcrown_plugins.fileio import atomic_write_text
from abcrown_plugins.transfer.masks import build_mask, classifier_names, layer_order, unit_layout

PATTERNS = ("unstructured", "structured", "groupwise")
ALLOCATIONS = ("verification-aware", "uniform", "conv-late")
SIGMA = 0.25


def _interleaved(fns: dict, reps: int, warmup: bool = False) -> tuple[dict, dict]:
    """Seconds of every ``fns`` entry over ``reps`` interleaved rounds; ``(times, last outputs)`` per key.

    A round calls every function once; the order rotates by one each round, so host
    load drifts over all of them alike. ``warmup``: one untimed round first.
    """
    keys = list(fns)
    times: dict = {k: [] for k in keys}
    outs: dict = {}
    if warmup:
        for k in keys:
            fns[k]()
    for r in range(max(1, reps)):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t0 = time.perf_counter()
            outs[k] = fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times, outs


def _med(ts: list[float]) -> float:
    return statistics.median(ts)


def _spread(ts: list[float], digits: int = 3, scale: float = 1.0) -> list[float]:
    """``[min, max]`` over the repetitions."""
    return [round(min(ts) * scale, digits), round(max(ts) * scale, digits)]


def _ratio_spread(num: list[float], den: list[float], digits: int = 2) -> list[float]:
    """``[min, max]`` of the per-round ratios (the rounds pair the two timings)."""
    return _spread([a / b for a, b in zip(num, den)], digits)


def _base(arch: str, x: torch.Tensor, seed: int) -> tuple[nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = model_zoo.build_model(arch, in_channels=3, input_size=32, num_classes=10)
    with torch.no_grad():
        for m in base.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.25)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    calib = next(noise_batches(x, 256, SIGMA, 256, torch.Generator().manual_seed(seed + 1)))
    calibrate_batchnorm(base, calib)
    return base.eval(), calib


_LAYOUTS: dict[tuple, object] = {}


def _layout(model: nn.Module, arch: str, pattern: str, frozen: int):
    key = (arch, pattern, frozen)
    if key not in _LAYOUTS:
        _LAYOUTS[key] = unit_layout(model, pattern, frozen_prefix=frozen)
    return _LAYOUTS[key]


def _frozen_prefix(model: nn.Module, arch: str, pattern: str, k: float) -> int:
    """The verification-aware allocation: the largest frozen prefix whose remaining layers hold k."""
    layers = int(_layout(model, arch, "unstructured", 0).layer.max()) + 1
    best = 0
    for f in range(layers):
        layout = _layout(model, arch, pattern, f)
        if int(layout.size.sum()) >= round(k * layout.total):
            best = f
    return best


def _finetuned(base: nn.Module, arch: str, calib: torch.Tensor, pattern: str, k: float, frozen: int, classes: int,
               seed: int) -> tuple[nn.Module, float]:
    g = torch.Generator().manual_seed(seed)
    tuned = copy.deepcopy(base).eval()
    layout = _layout(base, arch, pattern, frozen)
    params = dict(tuned.named_parameters())
    scores = {n: torch.rand(p.shape, generator=g) for n, p in params.items()}
    mask = build_mask(tuned, layout, scores, k)
    cls = set(classifier_names(tuned))
    changed = 0
    with torch.no_grad():
        for n, m in mask.items():
            if n in cls:
                continue
            p = params[n]
            changed += int(m.sum())
            p += m * (0.3 * (float(p.std()) if p.numel() > 1 else 0.1)) * torch.randn(p.shape, generator=g)
        last_name, last = layer_order(tuned)[-1]
        new = nn.Linear(last.in_features, classes)
        parent, _, attr = last_name.rpartition(".")
        setattr(tuned.get_submodule(parent) if parent else tuned, attr, new)
    center_classifier(tuned, calib)
    return tuned.eval(), changed / layout.total


def _break_even(repeats: int) -> dict:
    """Channel-subset vs dense convolution on cnn_7layer's largest layer (128->128, 4x4, stride 2, 8x8 input)."""
    torch.manual_seed(0)
    x = torch.randn(200, 128, 8, 8)
    w = torch.randn(128, 128, 4, 4)
    conv = lambda a, b: F.conv2d(a, b, None, 2, 1)  # noqa: E731
    fracs = (0.0625, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
    fns = {"dense": lambda: conv(x, w)}
    for frac in fracs:
        c = int(128 * frac)
        ws, wi, idx = w[:c].contiguous(), w[:, :c].contiguous(), torch.arange(c)
        fns[("rows", frac)] = lambda ws=ws: conv(x, ws)
        fns[("inputs", frac)] = lambda wi=wi, idx=idx: conv(x[:, idx], wi)
    d = w * (torch.rand(w.shape) < 0.01)
    csr = d.reshape(128, -1).to_sparse_csr()

    def sparse_product():
        cols = F.unfold(x, 4, padding=1, stride=2)  # (B, 2048, 16)
        return torch.sparse.mm(csr, cols.transpose(0, 1).reshape(2048, -1))

    fns["sparse"] = sparse_product
    times, _ = _interleaved(fns, repeats, warmup=True)
    dense = _med(times["dense"])
    rows = {f: _med(times[("rows", f)]) for f in fracs}
    inputs = {f: _med(times[("inputs", f)]) for f in fracs}
    be_rows = next((f for f, t in rows.items() if t >= dense), 1.0)
    be_inputs = next((f for f, t in inputs.items() if t >= dense), 1.0)
    return {"rows": be_rows, "inputs": be_inputs, "dense_ms": round(dense * 1e3, 2),
            "dense_ms_spread": _spread(times["dense"], 2, 1e3),
            "rows_ms": {str(f): round(t * 1e3, 2) for f, t in rows.items()},
            "rows_ms_spread": {str(f): _spread(times[("rows", f)], 2, 1e3) for f in fracs},
            "inputs_ms": {str(f): round(t * 1e3, 2) for f, t in inputs.items()},
            "inputs_ms_spread": {str(f): _spread(times[("inputs", f)], 2, 1e3) for f in fracs},
            "unstructured_1pct_sparse_over_dense": round(_med(times["sparse"]) / dense, 2),
            "unstructured_1pct_sparse_over_dense_spread": _ratio_spread(times["sparse"], times["dense"])}


def _engine_break_even(x: torch.Tensor, seed: int, repeats: int) -> list[dict]:
    """Trace-mode replay time of one batch against the engine's break-even, structured deltas in conv4+."""
    base, calib = _base("cnn_7layer", x, seed)
    batch = next(noise_batches(x, 200, SIGMA, 200, torch.Generator().manual_seed(3)))
    out = []
    for frozen, k in ((3, 0.05), (3, 0.15), (3, 0.3), (2, 0.5)):
        tuned, _ = _finetuned(base, "cnn_7layer", calib, "structured", k, frozen, 10, seed=8)
        row = {"frozen_prefix": frozen, "k": k}
        fns = {}
        for be in (0.0, 0.25, 0.5, 0.75, 1.0):
            eng = DifferentialEngine(base, [tuned], break_even=be, tie_tol=-1.0)
            rec = eng.base_activations(batch, mode="trace")
            fns[str(be)] = lambda eng=eng, rec=rec: eng.forward_from(rec, x.shape, mode="trace")
        times, _ = _interleaved(fns, repeats, warmup=True)
        row.update({be: round(_med(t) * 1e3, 1) for be, t in times.items()})
        row["spread_ms"] = {be: _spread(t, 1, 1e3) for be, t in times.items()}
        out.append(row)
    return out


def _max_abs_diff(base, tuned, x, bs) -> float:
    """Raw engine logits (guard off, trace mode: every sparse path that pays is taken) vs dense, one batch."""
    batch = next(noise_batches(x, bs, SIGMA, bs, torch.Generator().manual_seed(123)))
    raw = DifferentialEngine(base, [tuned], tie_tol=-1.0)
    with torch.no_grad():
        out = raw.forward_from(raw.base_activations(batch, mode="trace"), x.shape, mode="trace")[0]
        return float((out - tuned(batch)).abs().max())


def bench_model(arch: str, x: torch.Tensor, args, log) -> dict:
    base, calib = _base(arch, x, args.seed)
    rows, exact, max_diff, fallbacks, trace_mb = [], True, 0.0, 0, 0.0
    for pattern in PATTERNS:
        for alloc in ALLOCATIONS:
            for kp in args.ks:
                k = kp / 100
                frozen = _frozen_prefix(base, arch, pattern, k) if alloc == "verification-aware" else 0
                if alloc == "conv-late":
                    tuned, achieved = random_finetuned(base, pattern, k, allocation="late", scale=0.3, change_bn=True,
                                                       generator=torch.Generator().manual_seed(args.seed + int(kp)))
                    center_classifier(tuned, calib)
                else:
                    tuned, achieved = _finetuned(base, arch, calib, pattern, k, frozen, 10,
                                                 seed=args.seed + int(kp))
                eng = DifferentialEngine(base, [tuned])
                eng.plans(tuple(x.shape))
                gen = lambda: torch.Generator().manual_seed(args.seed + 7)  # noqa: E731 - same noise for all
                trace = record_trace(eng, x, args.n, SIGMA, args.batch_size, gen())
                times, outs = _interleaved(
                    {"dense": lambda: sample_counts(tuned, x, args.n, SIGMA, 10, args.batch_size, gen()),
                     "trace": lambda: trace_counts(eng, trace)[0],
                     "live": lambda: multitask_counts(eng, x, args.n, SIGMA, args.batch_size, gen())[0]}, args.reps)
                dense, replay, live = outs["dense"], outs["trace"], outs["live"]
                t_dense, t_trace, t_live = _med(times["dense"]), _med(times["trace"]), _med(times["live"])
                same = torch.equal(dense, replay) and torch.equal(dense, live)
                exact &= same
                diff = _max_abs_diff(base, tuned, x, args.batch_size)
                max_diff = max(max_diff, diff)
                fallbacks += sum(eng.stats.fallbacks)
                trace_mb = max(trace_mb, trace.nbytes / 2**20)
                plan = eng.plans(tuple(x.shape))[0]
                row = {"model": arch, "pattern": pattern, "allocation": alloc, "k": kp,
                       "achieved_k": round(achieved * 100, 2), "frozen_prefix": frozen,
                       "first_changed": plan.first_changed, "dense_s": round(t_dense, 3),
                       "trace_s": round(t_trace, 3), "live_s": round(t_live, 3), "record_s": round(trace.record_s, 3),
                       "dense_s_spread": _spread(times["dense"]), "trace_s_spread": _spread(times["trace"]),
                       "live_s_spread": _spread(times["live"]),
                       "speedup": round(t_dense / t_trace, 2), "speedup_live": round(t_dense / t_live, 2),
                       "speedup_spread": _ratio_spread(times["dense"], times["trace"]),
                       "speedup_live_spread": _ratio_spread(times["dense"], times["live"]),
                       "saved_pct": round(100 * (1 - t_trace / t_dense), 1),
                       "saved_live_pct": round(100 * (1 - t_live / t_dense), 1),
                       "exact": same, "max_abs_diff": diff, "fallbacks": sum(eng.stats.fallbacks),
                       "trace_mb": round(trace.nbytes / 2**20, 1), "classes_used": int((dense > 0).sum())}
                rows.append(row)
                log(f"{arch:12s} {pattern:12s} {alloc:18s} k={kp:>2}% (got {row['achieved_k']:5.2f}%, frozen "
                    f"{frozen}, first change {plan.first_changed}) dense {t_dense:.3f}s trace {t_trace:.3f}s "
                    f"live {t_live:.3f}s -> x{row['speedup']:.2f} (live x{row['speedup_live']:.2f}) "
                    f"exact={same} diff={diff:.1e} fallbacks={row['fallbacks']}")
    # multi-task: T verification-aware structured k=8% networks, one noise draw
    mt = {}
    for pattern, alloc in (("structured", "verification-aware"), ("unstructured", "verification-aware"),
                           ("structured", "uniform")):
        k = 0.08
        frozen = _frozen_prefix(base, arch, pattern, k) if alloc == "verification-aware" else 0
        tasks = [_finetuned(base, arch, calib, pattern, k, frozen, 10, seed=1000 + i)[0] for i in range(args.tasks)]
        eng = DifferentialEngine(base, tasks)
        eng.plans(tuple(x.shape))
        gen = lambda: torch.Generator().manual_seed(args.seed + 11)  # noqa: E731
        times, outs = _interleaved(
            {"dense": lambda: [sample_counts(t, x, args.n, SIGMA, 10, args.batch_size, gen()) for t in tasks],
             "shared": lambda: multitask_counts(eng, x, args.n, SIGMA, args.batch_size, gen())}, args.reps)
        dense, shared = outs["dense"], outs["shared"]
        t_dense, t_shared = _med(times["dense"]), _med(times["shared"])
        same = all(torch.equal(a, b) for a, b in zip(dense, shared))
        exact &= same
        fallbacks += sum(eng.stats.fallbacks)
        key = f"{pattern}/{alloc}"
        mt[key] = {"dense_s": round(t_dense, 3), "shared_s": round(t_shared, 3),
                   "speedup": round(t_dense / t_shared, 2), "exact": same, "fallbacks": sum(eng.stats.fallbacks),
                   "dense_s_spread": _spread(times["dense"]), "shared_s_spread": _spread(times["shared"]),
                   "speedup_spread": _ratio_spread(times["dense"], times["shared"])}
        log(f"{arch:12s} multi-task T={args.tasks} {key}: {args.tasks} dense {t_dense:.3f}s, shared "
            f"{t_shared:.3f}s -> x{t_dense / t_shared:.2f} exact={same}")
    # dense certifier overhead: certify() vs raw forward passes on the same noisy inputs (interleaved, medians)
    n0 = max(1, args.n // 10)
    g = gen()
    inputs = list(noise_batches(x, n0, SIGMA, args.batch_size, g)) + \
        list(noise_batches(x, args.n, SIGMA, args.batch_size, g))

    def raw():
        with torch.no_grad():
            for b in inputs:
                base(b)

    times, _ = _interleaved({"certify": lambda: certify(base, x, n0, args.n, 0.001, SIGMA, 10, args.batch_size,
                                                       gen()),
                             "raw": raw}, max(3, args.reps))
    t_cert, t_raw = _med(times["certify"]), _med(times["raw"])
    log(f"{arch:12s} dense certify {t_cert:.3f}s vs raw forward {t_raw:.3f}s -> overhead x{t_cert / t_raw:.3f}")
    return {"rows": rows, "multitask": mt, "exact": exact, "max_abs_diff": max_diff, "fallbacks": fallbacks,
            "trace_mb": round(trace_mb, 1), "dense_overhead": round(t_cert / t_raw, 3),
            "dense_overhead_spread": _ratio_spread(times["certify"], times["raw"], 3)}


def table(results: dict, ks) -> str:
    lines = ["Time saved (%) by the exact differential engine against the dense certifier "
             "(seed 000 Table 1/3 form; same image, noise and n). `trace`: base trace reused "
             "(the base's certification work); `live`: this network alone, shared prefix recomputed.", ""]
    out = []
    for arch, res in results.items():
        for pattern in PATTERNS:
            for alloc in ALLOCATIONS:
                for acc, key in (("trace", "saved_pct"), ("live", "saved_live_pct")):
                    row = {"arch": arch, "pattern": pattern, "allocation": alloc, "accounting": acc}
                    for r in res["rows"]:
                        if r["pattern"] == pattern and r["allocation"] == alloc:
                            row[str(r["k"])] = f"{r[key]:.1f}"
                    out.append(row)
    cols = ["arch", "pattern", "allocation", "accounting"] + [str(k) for k in ks]
    heads = ["Architecture", "Sparsity pattern", "Allocation", "Accounting"] + [f"k={k}%" for k in ks]
    lines.append(markdown_table(out, cols, heads))
    lines += ["", "Multi-task (T networks, one noise draw; speedup = T dense runs / one shared pass):", ""]
    mt_rows = [{"arch": a, "config": key, **v} for a, res in results.items() for key, v in res["multitask"].items()]
    lines.append(markdown_table(mt_rows, ["arch", "config", "dense_s", "shared_s", "speedup", "exact"],
                                ["Architecture", "Deltas (k=8%)", "T dense (s)", "shared (s)", "speedup", "exact"]))
    return "\n".join(lines)


def bench_transfer(run_dir: Path, repeats: int, log) -> dict:
    """Median time saved of a finished transfer run's sparse networks over ``repeats`` side-by-side runs."""
    from abcrown_plugins.config import load_config
    from abcrown_plugins.differential import certify_compared, time_saved
    from abcrown_plugins.models import load_model
    from abcrown_plugins.smoothing.run import SmoothingSettings, read_tsv
    from abcrown_plugins.transfer.scenario import dataset_for_checkpoint

    cfg = load_config(run_dir / "config.yaml")
    settings = SmoothingSettings.from_config(cfg)
    runs = sorted(p.parent for p in run_dir.glob("*/*/checkpoint.pt")
                  if p.parent.parent.name != "pretrain" and "-k" in p.parent.name)
    if not runs:
        raise SystemExit(f"no sparse downstream checkpoints under {run_dir}")
    loaded = [load_model(r / "checkpoint.pt") for r in runs]
    base_paths = {one.meta.transfer.base_checkpoint for one in loaded}
    if len(base_paths) != 1:
        raise SystemExit(f"the sparse networks record {len(base_paths)} base networks; expected one")
    base = load_model(base_paths.pop()).model.eval()
    datasets = [dataset_for_checkpoint(one.meta, settings.split, cfg.data.root, cfg.data.num_test,
                                       seed=cfg.general.seed) for one in loaded]
    names = [f"{r.parent.name}/{r.name}" for r in runs]
    expected = [[(x["idx"], x["predict"], x["radius"]) for x in read_tsv(r / "certify" / "certify.tsv")[1]]
                for r in runs]
    live, trace, multi, exact = [[] for _ in runs], [[] for _ in runs], [], True
    for rep in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            crows, timing = certify_compared(base, [one.model.eval() for one in loaded], datasets, settings,
                                            [Path(tmp) / str(i) for i in range(len(runs))], Path(tmp) / "t.tsv",
                                            "cpu", cfg.general.seed, names, desc=f"repetition {rep + 1}")
        exact &= all([(x["idx"], x["predict"], x["radius"]) for x in r] == e for r, e in zip(crows, expected))
        saved = time_saved(timing, len(runs))
        for i in range(len(runs)):
            live[i].append(saved.live[i])
            trace[i].append(saved.trace[i])
        multi.append(saved.multitask)
        log(f"repetition {rep + 1}: multi-task {saved.multitask}, trace "
            + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, saved.trace)))
    rows = []
    for i, (name, one) in enumerate(zip(names, loaded)):
        t = one.meta.transfer
        rows.append({"network": name, "pattern": t.pattern, "k": t.k, "frozen_prefix": t.frozen_prefix,
                     "saved_live_pct": round(100 * statistics.median(live[i]), 1),
                     "saved_trace_pct": round(100 * statistics.median(trace[i]), 1),
                     "trace_range_pct": [round(100 * min(trace[i]), 1), round(100 * max(trace[i]), 1)]})
    return {"benchmark": "transfer_time_saved", "run": str(run_dir), "repeats": repeats, "exact": exact,
            "examples": settings.num_examples, "n": settings.n, "batch_size": settings.batch_size,
            "torch_threads": torch.get_num_threads(), "networks": rows,
            "multitask_saved_pct": None if multi[0] is None else round(100 * statistics.median(multi), 1),
            "multitask_range_pct": None if multi[0] is None else [round(100 * min(multi), 1),
                                                                  round(100 * max(multi), 1)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="noise samples per measurement")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--ks", default="1,8,64", help="updated-parameter ratios in percent (all: 1,2,4,8,16,32,64)")
    ap.add_argument("--models", default="cnn_7layer,resnet18_nr")
    ap.add_argument("--tasks", type=int, default=10, help="T for the multi-task measurement")
    ap.add_argument("--reps", type=int, default=5,
                    help="interleaved timed repetitions per figure (medians; *_spread fields: [min, max])")
    ap.add_argument("--repeats", type=int, default=None, help="deprecated name of --reps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/bench_smoothing")
    ap.add_argument("--transfer", help="re-time the sparse networks of this finished transfer run (see above)")
    args = ap.parse_args()
    args.ks = [int(k) for k in args.ks.split(",")]
    if args.repeats is not None:
        warnings.warn("--repeats is deprecated; use --reps", DeprecationWarning, stacklevel=1)
        args.reps = args.repeats
    args.reps = max(1, args.reps)
    torch.set_num_threads(args.threads)
    set_progress(False)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.transfer:
        result = bench_transfer(Path(args.transfer), args.reps, log)
        log(markdown_table(result["networks"], ["network", "frozen_prefix", "saved_live_pct", "saved_trace_pct",
                                                "trace_range_pct"]))
        print(json.dumps(result))
        return 0
    models = [m if m in model_zoo.MODELS else "resnet_small" for m in args.models.split(",")]
    test = load_dataset("synthetic", "test", num=8)
    x = test[0][0]
    t0 = time.perf_counter()
    log("break-even measurement ...")
    be = _break_even(args.reps)
    log(f"break-even: rows {be['rows']}, inputs {be['inputs']}, unstructured 1% sparse/dense "
        f"{be['unstructured_1pct_sparse_over_dense']}")
    engine_be = _engine_break_even(x, args.seed, args.reps)
    log("engine break-even (replay ms per batch of 200 by break_even): "
        + "; ".join(f"frozen {r['frozen_prefix']} k {r['k']}: " + ", ".join(f"{b}={r[b]}" for b in
                                                                            ("0.0", "0.25", "0.5", "0.75", "1.0"))
                    for r in engine_be))
    results = {arch: bench_model(arch, x, args, log) for arch in models}
    out = Path(args.out)
    md = table(results, args.ks)
    write_markdown(out / "table.md", md)
    atomic_write_text(out / "results.json", json.dumps({"break_even": be, "engine_break_even": engine_be,
                                                        "results": results}, indent=1) + "\n")
    target_rows = [r for res in results.values() for r in res["rows"]
                   if r["pattern"] == "structured" and r["allocation"] == "verification-aware" and r["k"] <= 8]
    speedup = {a: {f"{r['pattern']}/{r['allocation']}/{r['k']}": r["speedup"] for r in res["rows"]}
               for a, res in results.items()}
    speedup_live = {a: {f"{r['pattern']}/{r['allocation']}/{r['k']}": r["speedup_live"] for r in res["rows"]}
                    for a, res in results.items()}
    speedup_spread = {a: {f"{r['pattern']}/{r['allocation']}/{r['k']}": r["speedup_spread"] for r in res["rows"]}
                      for a, res in results.items()}
    speedup_live_spread = {a: {f"{r['pattern']}/{r['allocation']}/{r['k']}": r["speedup_live_spread"]
                               for r in res["rows"]} for a, res in results.items()}
    mt = {a: res["multitask"]["structured/verification-aware"]["speedup"] for a, res in results.items()}
    mt_spread = {a: res["multitask"]["structured/verification-aware"]["speedup_spread"] for a, res in results.items()}
    overhead = {a: res["dense_overhead"] for a, res in results.items()}
    summary = {
        "benchmark": "smoothing_differential", "models": models, "n": args.n, "batch_size": args.batch_size,
        "sigma": SIGMA, "ks": args.ks, "tasks": args.tasks, "reps": args.reps, "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "wall_s": round(time.perf_counter() - t0, 1),
        "exact": all(res["exact"] for res in results.values()),
        "max_abs_diff": max(res["max_abs_diff"] for res in results.values()),
        "fallbacks": sum(res["fallbacks"] for res in results.values()),
        "speedup": speedup, "speedup_live": speedup_live,
        "speedup_spread": speedup_spread, "speedup_live_spread": speedup_live_spread,
        "multitask_speedup": mt, "multitask_speedup_spread": mt_spread,
        "multitask_other": {a: {k: v["speedup"] for k, v in res["multitask"].items()} for a, res in results.items()},
        "dense_overhead": overhead,
        "dense_overhead_spread": {a: res["dense_overhead_spread"] for a, res in results.items()},
        "break_even": {"rows": be["rows"], "inputs": be["inputs"],
                       "unstructured_1pct_sparse_over_dense": be["unstructured_1pct_sparse_over_dense"],
                       "engine_default": BREAK_EVEN,
                       "engine_best": [max(("0.0", "0.25", "0.5", "0.75", "1.0"), key=lambda b: -r[b])
                                       for r in engine_be],
                       "dense_ms": be["dense_ms"], "dense_ms_spread": be["dense_ms_spread"],
                       "unstructured_1pct_sparse_over_dense_spread": be["unstructured_1pct_sparse_over_dense_spread"]},
        "trace_mb": {a: res["trace_mb"] for a, res in results.items()},
        # the same dense computation timed per row: max/min shows the machine's timing noise
        "dense_time_spread": {a: round(max(r["dense_s"] for r in res["rows"]) /
                                       max(min(r["dense_s"] for r in res["rows"]), 1e-9), 2)
                              for a, res in results.items()},
        "targets": {
            "structured_k<=8%_verification_aware_>=3x": {a: min(r["speedup"] for r in target_rows if r["model"] == a)
                                                         >= 3.0 for a in models},
            "multitask_>=5x": {a: v >= 5.0 for a, v in mt.items()},
            "dense_overhead_<=1.2x": {a: v <= 1.2 for a, v in overhead.items()},
        },
        "table": str(out / "table.md"),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
