"""Throughput against this machine's own convolution roofline; last line: one JSON object.

    flock /tmp/abcrown_bench.lock python tools/bench_throughput.py [--n 2000] [--reps 5]
        [--batches 25,50,100,200,500,1000,2000] [--threads 1,all] [--models cnn_7layer]
        [--out results/bench_throughput]

Measured on the machine it runs on, per model (``cnn_7layer`` by default; ``resnet18_nr``
optional), at 1 thread and at all cores (``torch.set_num_threads``):

* ``conv_ceiling_gflops``: the model's own Conv2d and Linear layers (its weights, inputs of
  its shapes), each timed alone at every batch size of ``--batches`` in NCHW and in
  channels_last; per layer the best (batch, layout) time per sample is kept, and the
  ceiling is the model's FLOPs over the sum of those best times: the throughput the
  model's arithmetic reaches if every layer ran as fast as it can here. FLOPs of a conv:
  ``2 * Cin/groups * kh * kw * Cout * Hout * Wout`` per sample; of a Linear: ``2 * in * out``
  (BatchNorm, ReLU and noise are not counted: they are overhead against the roofline).
  ``conv_peak_gflops``: the fastest single layer.
* ``certify_roofline_fraction``: dense certify's estimation step
  (``smoothing.certify.sample_counts`` over ``--n`` noisy samples at the chosen batch)
  achieved GFLOP/s (n * model FLOPs / time) over the ceiling at the same thread count.
  Targets: >= 0.85 at 1 thread, >= 0.8 at all cores.
* ``batch_sweep_us``: certify's time per sample at each ``--batches`` size;
  ``chosen_over_best``: the time per sample at the batch the project's calibration picks
  (``smoothing.run.certify_batch_size``, as a run with ``smoothing.batch_size: null`` does,
  fresh cache) over the best swept one, target <= 1.1 (null when the calibration module is
  absent; then the configuration's default batch is used). ``default_over_best``: the same
  for the old fixed default (1000).
* ``ibp_over_forward``: IBP verification (``bounds.interval_propagate`` with the margin
  spec, eval mode, no_grad, ``record=False``, eps 2/255) over a plain forward pass of the
  same batch (``--ibp-batch``, default: the verification's calibrated batch, else 256),
  target <= 2.1; ``ibp_roofline_fraction`` counts IBP as two dense passes (centre, radius).
* ``differential_roofline_fraction``: the exact differential engine
  (``differential.multitask_counts``, live mode, one structured k=8% fine-tuned network)
  in dense-equivalent GFLOP/s over the ceiling; ``differential_over_dense``: its time over
  the dense fine-tuned network's certify.

Certify runs on the network in ``--layout``: by default the one the smoothing run
measures and picks (``smoothing.run.certify_layout``; channels_last means the run's
``inference_form``, conv+BatchNorm folded; NCHW where the tree lacks it), batches
NCHW as the run feeds them; IBP runs on the NCHW network, as verification does;
``certify_roofline_fraction_<other layout>`` times the other one
at the chosen batch. The
project's allocator setting (``tuning.tune_allocator``) is applied first, as its own
processes do (``--allocator default`` leaves glibc's). ``certify_cpu_per_wall``: CPU
seconds per wall second of the certify timings, about the thread count when the cores were
this process's alone; less means other processes took them and the figures are theirs too.

Every figure is a median over ``--reps`` interleaved repetitions (one round runs every
configuration once; thread counts, batches and layouts alternate inside a round) after one
warm-up round; ``*_spread`` fields give ``[min, max]`` over repetitions. Memory is the peak
resident-memory growth of one run in a fresh subprocess (``verification.memory.PeakMemory``)
that loads the network's weights and nothing else first, so earlier runs' allocator caches do
not hide it; it is probed for every configuration at 1 thread and at the chosen batches at
more threads (it hardly depends on the thread count).

Writes into ``--out``: ``scaling.csv`` (time and memory against n, batch and threads for
certify and IBP), ``scaling.png`` (the same, plotted), ``scaling.md`` (the README table),
``layers.csv`` (per-layer roofline) and ``results.json``. The load average at start and end
is recorded: on a shared machine every figure moves with it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import model_zoo
from abcrown_plugins.bounds import input_box, interval_propagate, margin_spec
from abcrown_plugins.data import load_dataset
from abcrown_plugins.differential import DifferentialEngine, multitask_counts, random_finetuned
from abcrown_plugins.differential.delta import calibrate_batchnorm, center_classifier
from abcrown_plugins.fileio import atomic_write_text
from abcrown_plugins.report import markdown_table, write_csv, write_markdown
from abcrown_plugins.runtime import set_progress
from abcrown_plugins.smoothing.certify import noise_batches, sample_counts
from abcrown_plugins.verification.memory import PeakMemory

try:  # item 1 of issue 14; the benchmark runs without it (chosen_over_best: null)
    from abcrown_plugins.tuning.calibrate import choose_batch_size
except ImportError:  # pragma: no cover - depends on the tree
    choose_batch_size = None
try:  # the calibration smoothing runs use (smoothing.batch_size null)
    from abcrown_plugins.smoothing.run import SmoothingSettings, certify_batch_size
except ImportError:  # pragma: no cover - depends on the tree
    certify_batch_size = None
try:  # the layout smoothing runs choose by measurement, and the form they run it in
    from abcrown_plugins.smoothing.run import certify_layout, inference_form
except ImportError:  # pragma: no cover - depends on the tree
    certify_layout = inference_form = None
try:  # the calibration IBP verification uses (verification.batch_size null)
    from abcrown_plugins.verification.evaluate import VERIFY_CANDIDATES, verify_batch_size
except ImportError:  # pragma: no cover - depends on the tree
    verify_batch_size = None
try:  # item 2 of issue 14: the allocator setting the project's own processes use
    from abcrown_plugins.tuning.alloc import tune_allocator
except ImportError:  # pragma: no cover - depends on the tree
    tune_allocator = None

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}

SIGMA = 0.25
EPS = 2 / 255
CLASSES = 10
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
DEFAULT_CERTIFY_BATCH = 1000  # smoothing.batch_size's default
DEFAULT_IBP_BATCH = 256  # verification.batch_size's default
TARGETS = {"certify_1_thread": 0.85, "certify_all_threads": 0.8, "ibp_over_forward": 2.1, "chosen_over_best": 1.1}
MIN_TIMED_S = 0.02  # short calls are repeated inside one timing until they take this long


# ---------------------------------------------------------------------------- timing

def _stats(xs: list[float]) -> tuple[float, list[float]]:
    """(median, [min, max])."""
    return statistics.median(xs), [min(xs), max(xs)]


def interleaved(jobs: dict, reps: int, log=None, min_timed_s: float = MIN_TIMED_S,
                cpu: dict | None = None) -> dict[object, list[float]]:
    """Seconds per call of every job, ``reps`` rounds after one warm-up round.

    ``jobs``: key -> ``(threads, fn)``. A round runs every job once, in the given
    order, each under its thread count; the order rotates by one each round so no job
    always follows the same one. Calls shorter than ``min_timed_s`` are repeated
    inside one timing (the count fixed in the warm-up) and divided. ``cpu``, when given,
    receives per job the process's CPU seconds per wall second of each timing (about the
    thread count on an idle machine; less when other processes take the cores).
    """
    keys = list(jobs)
    inner = {}
    for k in keys:  # warm-up: also fixes the inner repeat count
        threads, fn = jobs[k]
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        inner[k] = max(1, min(1000, int(min_timed_s / max(dt, 1e-7))))
    times: dict[object, list[float]] = {k: [] for k in keys}
    for r in range(reps):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            threads, fn = jobs[k]
            torch.set_num_threads(threads)
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(inner[k]):
                fn()
            wall = time.perf_counter() - t0
            times[k].append(wall / inner[k])
            if cpu is not None:
                cpu.setdefault(k, []).append((time.process_time() - c0) / max(wall, 1e-9))
        if log:
            log(f"  round {r + 1}/{reps} done")
    return times


# ---------------------------------------------------------------------------- model

def build(arch: str, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """The zoo model with random BatchNorm affine parameters and statistics calibrated on noisy inputs
    (so predictions vary under noise as a trained network's do), eval mode; and one test image."""
    torch.manual_seed(seed)
    model = model_zoo.build_model(arch, in_channels=3, input_size=32, num_classes=CLASSES, mean=MEAN, std=STD)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.25)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    x = load_dataset("synthetic", "test", num=1)[0][0]
    calib = next(noise_batches(x, 256, SIGMA, 256, torch.Generator().manual_seed(seed + 1)))
    calibrate_batchnorm(model, calib)
    center_classifier(model, calib)
    return model.eval(), x


def layer_shapes(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Every Conv2d and Linear of ``model`` with its input shape (one sample) and FLOPs per sample."""
    found: list[dict] = []

    def hook(mod, args, out):
        shape = tuple(args[0].shape[1:])
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            flops = 2 * mod.in_channels // mod.groups * kh * kw * mod.out_channels * out.shape[2] * out.shape[3]
        else:
            flops = 2 * mod.in_features * mod.out_features
        found.append({"module": mod, "in_shape": shape, "flops": flops, "kind": type(mod).__name__})

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x.unsqueeze(0))
    for h in handles:
        h.remove()
    names = {m: n for n, m in model.named_modules()}
    for d in found:
        d["name"] = names[d["module"]]
    return found


@torch.no_grad()
def roofline(layers: list[dict], batches: list[int], threads: list[int], reps: int, log) -> dict:
    """Per layer and thread count, the best (batch, layout) time per sample; the model ceiling per thread count."""
    best = {t: [] for t in threads}
    rows = []
    for d in layers:
        mod = d["module"]
        layouts = {"nchw": (mod, None)}
        if isinstance(mod, nn.Conv2d):
            layouts["channels_last"] = (copy.deepcopy(mod).to(memory_format=torch.channels_last),
                                        torch.channels_last)
        big = torch.randn(max(batches), *d["in_shape"])
        inputs = {lay: (big if fmt is None else big.contiguous(memory_format=fmt)) for lay, (_, fmt) in layouts.items()}
        jobs = {}
        for t in threads:
            for b in batches:
                for lay, (m, _) in layouts.items():
                    xb = inputs[lay][:b]
                    jobs[(t, b, lay)] = (t, lambda m=m, xb=xb: m(xb))
        times = interleaved(jobs, reps)
        del big, inputs
        for t in threads:
            per = {(b, lay): statistics.median(times[(t, b, lay)]) / b for b in batches for lay in layouts}
            (bb, bl), tb = min(per.items(), key=lambda kv: kv[1])
            best[t].append(tb)
            lo, hi = _stats([s / bb for s in times[(t, bb, bl)]])[1]
            rows.append({"layer": d["name"], "kind": d["kind"], "in_shape": "x".join(map(str, d["in_shape"])),
                         "threads": t, "mflop_per_sample": round(d["flops"] / 1e6, 3), "best_batch": bb,
                         "best_layout": bl, "gflops": round(d["flops"] / tb / 1e9, 2),
                         "gflops_nchw_best": round(d["flops"] / min(v for (b, lay), v in per.items()
                                                                    if lay == "nchw") / 1e9, 2),
                         "gflops_spread": [round(d["flops"] / hi / 1e9, 2), round(d["flops"] / lo / 1e9, 2)]})
        log(f"  {d['name']:>6s} {d['kind']:6s} {d['flops'] / 1e6:7.2f} MFLOP: "
            + ", ".join(f"{r['threads']}t {r['gflops']:.1f} GFLOP/s ({r['best_layout']}, b={r['best_batch']})"
                        for r in rows[-len(threads):]))
    total = sum(d["flops"] for d in layers)
    ceiling = {t: total / sum(best[t]) / 1e9 for t in threads}
    peak = {t: max(r["gflops"] for r in rows if r["threads"] == t) for t in threads}
    return {"ceiling": ceiling, "peak": peak, "rows": rows}


# ---------------------------------------------------------------------------- workloads

def in_layout(model: nn.Module, layout: str) -> nn.Module:
    """``model`` itself (nchw) or the channels-last form the smoothing run certifies with
    (``smoothing.run.inference_form``: conv+BatchNorm folded, in-place ReLUs; a plain channels_last copy
    where the tree lacks it): the same function up to rounding."""
    if layout == "nchw":
        return model
    if inference_form is not None and layout == "channels_last":
        return inference_form(model)
    return copy.deepcopy(model).to(memory_format=FORMATS[layout])


def certify_fn(model, x, n: int, batch: int, seed: int) -> Callable[[], object]:
    """Dense certify's estimation step: ``sample_counts`` over ``n`` noisy copies of ``x`` (NCHW batches, as the
    smoothing run feeds them whatever the network's layout)."""
    return lambda: sample_counts(model, x, n, SIGMA, CLASSES, batch, torch.Generator().manual_seed(seed))


def ibp_inputs(batch: int):
    data = load_dataset("synthetic", "test", num=batch)
    xs, ys = next(data.batches(batch))
    lower, upper = input_box(xs, EPS)
    return xs, lower, upper, margin_spec(ys, CLASSES)


def ibp_fns(model, batch: int) -> tuple[Callable, Callable]:
    """(plain forward, IBP with the margin spec) of one verification batch (NCHW), eval mode, no_grad."""
    xs, lower, upper, spec = ibp_inputs(batch)

    def forward():
        with torch.no_grad():
            return model(xs)

    def ibp():
        with torch.no_grad():
            return interval_propagate(model, lower, upper, spec=spec, record=False)
    return forward, ibp


def calibrate(model, x, arch: str, threads: int, n: int, candidates: list[int], seed: int, log) -> dict | None:
    """The batch size the project's calibration picks for certify at ``threads`` (fresh cache), or None.

    Where the tree has it, the smoothing run's own ``certify_batch_size`` on the network in the form it certifies,
    as the run calls it (its candidates, repetitions and memory budget); else
    ``tuning.choose_batch_size`` over the sweep's batch sizes.
    """
    if choose_batch_size is None:
        return None
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if certify_batch_size is not None:
            settings = SmoothingSettings(sigma=SIGMA, n0=min(100, n), n=n, alpha=0.001, batch_size=None)
            cal, how = certify_batch_size(model, x, settings, CLASSES, "cpu", cache_dir=Path(tmp)), "smoothing.run"
        else:
            def run(b: int) -> None:  # one batch of b noisy samples
                certify_fn(model, x, b, b, seed)()

            cal = choose_batch_size("certify", run, candidates,
                                    key={"model": arch, "threads": threads, "device": "cpu"},
                                    cache_dir=Path(tmp))
            how = "tuning.choose_batch_size"
        dt = time.perf_counter() - t0
    log(f"  calibration ({threads} threads, {how}): batch {cal.batch_size} in {dt:.1f}s")
    return {"batch_size": int(cal.batch_size), "calibrate_s": round(dt, 2), "by": how,
            "per_sample_us": {str(k): round(v * 1e6, 1) for k, v in cal.per_sample_s.items()}}


# ---------------------------------------------------------------------------- memory probes

def probe(spec: dict) -> dict:
    """Run one workload in this (fresh) process; peak resident-memory growth and time.

    The network is the parent's (weights and image loaded from ``spec["weights"]``, no
    forward pass before), so the growth is all the workload's: its activations, noise and
    bound buffers, and the libraries' first-call scratch.
    """
    torch.set_num_threads(spec["threads"])
    set_progress(False)
    if spec["tune_allocator"]:
        tune_allocator()
    saved = torch.load(spec["weights"])
    model = model_zoo.build_model(spec["arch"], in_channels=3, input_size=32, num_classes=CLASSES, mean=MEAN,
                                  std=STD)
    model.load_state_dict(saved["state"])
    x = saved["x"]
    if spec["workload"] == "certify":
        fn = certify_fn(in_layout(model.eval(), spec["layout"]), x, spec["n"], spec["batch"], spec["seed"] + 7)
    else:  # verification runs IBP on the network as it is (NCHW)
        fn = ibp_fns(model.eval(), spec["batch"])[1]
    with PeakMemory("cpu") as pm:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
    return {"peak_rss_mib": round(pm.mib, 1), "how": pm.how, "time_s": dt}


def run_probe(spec: dict) -> dict | None:
    proc = subprocess.run([sys.executable, __file__, "--probe", json.dumps(spec)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- one model

def bench_model(arch: str, args, log) -> dict:
    nchw_model, x = build(arch, args.seed)
    layers = layer_shapes(nchw_model, x)
    flops = sum(d["flops"] for d in layers)
    threads = args.threads
    log(f"{arch}: {flops / 1e6:.1f} MFLOP per sample in {len(layers)} conv/linear layers; roofline ...")
    roof = roofline(layers, args.batches, threads, args.reps, log)
    ceiling = roof["ceiling"]
    log(f"{arch}: ceiling " + ", ".join(f"{t}t {c:.1f} GFLOP/s" for t, c in ceiling.items()))

    # as a smoothing run does: the layout (measured at batch 100), then the certify batch calibrated on the
    # network in that form (else the configuration's old default)
    layout = args.layout
    if layout == "project":
        layout = "nchw"
        if certify_layout is not None:
            torch.set_num_threads(max(threads))
            with tempfile.TemporaryDirectory() as tmp:
                settings = SmoothingSettings(sigma=SIGMA, n0=min(100, args.n), n=args.n, alpha=0.001,
                                             batch_size=None)
                layout = certify_layout(nchw_model, x, settings, "cpu", cache_dir=Path(tmp))
        log(f"  layout: {layout}")
    model = in_layout(nchw_model, layout)  # certify runs in this form; IBP and the engine on the NCHW network
    cal = {}
    for t in threads:
        cal[t] = calibrate(model, x, arch, t, args.n, args.batches, args.seed, log)
    chosen = {t: (cal[t]["batch_size"] if cal[t] else DEFAULT_CERTIFY_BATCH) for t in threads}
    ibp_batch, ibp_source = args.ibp_batch, "option"
    if ibp_batch is None:  # the verification's own calibration (1 thread), else its old default
        ibp_batch, ibp_source = DEFAULT_IBP_BATCH, "default"
        if verify_batch_size is not None:
            torch.set_num_threads(min(threads))
            with tempfile.TemporaryDirectory() as tmp:
                data = load_dataset("synthetic", "test", num=max(VERIFY_CANDIDATES))
                ibp_batch = verify_batch_size(nchw_model, data, EPS, "ibp", "cpu", cache_dir=Path(tmp)).batch_size
            ibp_source = "calibrated"
        log(f"  IBP batch: {ibp_batch} ({ibp_source})")

    # certify batch sweep (+ the chosen and default batches), all thread counts interleaved
    jobs = {}
    sweep = sorted(set(args.batches) | set(chosen.values()) | {DEFAULT_CERTIFY_BATCH})
    other = "nchw" if layout == "channels_last" else "channels_last"
    other_model = in_layout(nchw_model, other)
    for t in threads:
        for b in sweep:
            jobs[("certify", t, b, args.n)] = (t, certify_fn(model, x, args.n, b, args.seed + 7))
        for n in args.scaling_n:  # time against n at the chosen batch
            if n != args.n:
                jobs[("certify", t, chosen[t], n)] = (t, certify_fn(model, x, n, chosen[t], args.seed + 7))
        # the other layout at the chosen batch, for comparison
        jobs[("certify_" + other, t, chosen[t], args.n)] = (t, certify_fn(other_model, x, args.n, chosen[t],
                                                                          args.seed + 7))
    # IBP and forward at every IBP batch; the differential engine and its dense network
    ibp_batches = sorted(set(args.ibp_batches) | {ibp_batch})
    for t in threads:
        for b in ibp_batches:
            fwd, ibp = ibp_fns(nchw_model, b)
            jobs[("forward", t, b, b)] = (t, fwd)
            jobs[("ibp", t, b, b)] = (t, ibp)
    exact = None
    if isinstance(nchw_model, nn.Sequential):
        tuned, _ = random_finetuned(nchw_model, "structured", 0.08, allocation="late", scale=0.3, change_bn=True,
                                    generator=torch.Generator().manual_seed(args.seed + 8))
        center_classifier(tuned, next(noise_batches(x, 256, SIGMA, 256, torch.Generator().manual_seed(3))))
        eng = DifferentialEngine(nchw_model, [tuned])
        eng.plans(tuple(x.shape))
        for t in threads:
            b = chosen[t]
            jobs[("differential", t, b, args.n)] = (t, lambda b=b: multitask_counts(
                eng, x, args.n, SIGMA, b, torch.Generator().manual_seed(args.seed + 7), desc=None))
            jobs[("dense_finetuned", t, b, args.n)] = (t, certify_fn(tuned, x, args.n, b, args.seed + 7))
        b = chosen[threads[0]]  # the engine's counts equal the dense network's on the same noise
        exact = torch.equal(multitask_counts(eng, x, args.n, SIGMA, b, torch.Generator().manual_seed(1), desc=None)[0],
                            sample_counts(tuned, x, args.n, SIGMA, CLASSES, b, torch.Generator().manual_seed(1)))
    log(f"{arch}: {len(jobs)} timed configurations x {args.reps} interleaved rounds ...")
    cpu: dict = {}
    times = interleaved(jobs, args.reps, log, cpu=cpu)

    def med(key):
        return statistics.median(times[key])

    out: dict = {"model": arch, "mflop_per_sample": round(flops / 1e6, 3)}
    out["conv_ceiling_gflops"] = {str(t): round(c, 2) for t, c in ceiling.items()}
    out["conv_peak_gflops"] = {str(t): p for t, p in roof["peak"].items()}
    out["certify_batch"] = {str(t): chosen[t] for t in threads}
    out["certify_batch_source"] = "calibrated" if choose_batch_size is not None else "default"
    out["calibration"] = {str(t): cal[t] for t in threads} if choose_batch_size is not None else None
    frac, frac_spread, gflops = {}, {}, {}
    for t in threads:
        tt = times[("certify", t, chosen[t], args.n)]
        gflops[str(t)] = round(args.n * flops / statistics.median(tt) / 1e9, 2)
        frac[str(t)] = round(args.n * flops / statistics.median(tt) / 1e9 / ceiling[t], 3)
        frac_spread[str(t)] = [round(args.n * flops / max(tt) / 1e9 / ceiling[t], 3),
                               round(args.n * flops / min(tt) / 1e9 / ceiling[t], 3)]
    out["certify_gflops"] = gflops
    out["certify_roofline_fraction"] = frac
    out["certify_roofline_fraction_spread"] = frac_spread
    out["certify_layout"] = layout
    # CPU seconds per wall second of the certify timings: ~threads when the cores were ours
    out["certify_cpu_per_wall"] = {str(t): round(statistics.median(
        [v for (w, tt, _, _), vs in cpu.items() if w == "certify" and tt == t for v in vs]), 2) for t in threads}
    out["contended"] = {str(t): out["certify_cpu_per_wall"][str(t)] < 0.8 * t for t in threads}
    out[f"certify_roofline_fraction_{other}"] = {
        str(t): round(args.n * flops / med(("certify_" + other, t, chosen[t], args.n)) / 1e9 / ceiling[t], 3)
        for t in threads}
    sweep_us = {str(t): {str(b): round(med(("certify", t, b, args.n)) / args.n * 1e6, 1) for b in sweep}
                for t in threads}
    out["batch_sweep_us"] = sweep_us
    out["batch_sweep_us_spread"] = {str(t): {str(b): [round(v / args.n * 1e6, 1) for v in
                                                      _stats(times[("certify", t, b, args.n)])[1]] for b in sweep}
                                    for t in threads}
    best_b = {t: min(args.batches, key=lambda b: med(("certify", t, b, args.n))) for t in threads}
    out["best_batch"] = {str(t): best_b[t] for t in threads}
    out["certify_roofline_fraction_best_batch"] = {
        str(t): round(args.n * flops / med(("certify", t, best_b[t], args.n)) / 1e9 / ceiling[t], 3) for t in threads}

    def over_best(b, t):
        return round(med(("certify", t, b, args.n)) / med(("certify", t, best_b[t], args.n)), 3)
    out["chosen_over_best"] = ({str(t): over_best(chosen[t], t) for t in threads}
                               if choose_batch_size is not None else None)
    out["default_over_best"] = {str(t): over_best(DEFAULT_CERTIFY_BATCH, t) for t in threads}
    ib = ibp_batch
    out["ibp_batch"], out["ibp_batch_source"] = ib, ibp_source
    out["ibp_over_forward"] = {str(t): round(med(("ibp", t, ib, ib)) / med(("forward", t, ib, ib)), 3)
                               for t in threads}
    out["ibp_over_forward_spread"] = {
        str(t): [round(v, 3) for v in _stats([a / b for a, b in zip(times[("ibp", t, ib, ib)],
                                                                    times[("forward", t, ib, ib)])])[1]]
        for t in threads}
    out["ibp_over_forward_by_batch"] = {str(t): {str(b): round(med(("ibp", t, b, b)) / med(("forward", t, b, b)), 3)
                                                 for b in ibp_batches} for t in threads}
    out["ibp_roofline_fraction"] = {str(t): round(2 * ib * flops / med(("ibp", t, ib, ib)) / 1e9 / ceiling[t], 3)
                                    for t in threads}
    out["forward_roofline_fraction"] = {
        str(t): round(ib * flops / med(("forward", t, ib, ib)) / 1e9 / ceiling[t], 3) for t in threads}
    if exact is not None:
        out["differential_roofline_fraction"] = {
            str(t): round(args.n * flops / med(("differential", t, chosen[t], args.n)) / 1e9 / ceiling[t], 3)
            for t in threads}
        out["differential_over_dense"] = {
            str(t): round(med(("differential", t, chosen[t], args.n)) / med(("dense_finetuned", t, chosen[t], args.n)),
                          3) for t in threads}
        out["differential_exact"] = exact
    else:
        out["differential_roofline_fraction"] = out["differential_over_dense"] = None
        out["differential_exact"] = None

    # the scaling table: every certify and IBP configuration, memory from fresh subprocesses
    rows = []
    for (work, t, b, n), tt in times.items():
        if work not in ("certify", "ibp"):
            continue
        m, (lo, hi) = _stats(tt)
        rows.append({"model": arch, "workload": work, "n": n, "batch": b, "threads": t, "time_s": round(m, 4),
                     "time_min_s": round(lo, 4), "time_max_s": round(hi, 4),
                     "us_per_sample": round(m / n * 1e6, 1), "peak_rss_mib": None})
    rows.sort(key=lambda r: (r["workload"], r["threads"], r["n"], r["batch"]))
    if args.memory:
        # memory hardly depends on threads: every row at 1 thread, more threads at the chosen batches only
        todo = [r for r in rows if r["threads"] == min(threads) or r["batch"] in (chosen[r["threads"]], ibp_batch)]
        log(f"{arch}: memory probes ({len(todo)} fresh processes) ...")
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "model.pt"
            torch.save({"state": nchw_model.state_dict(), "x": x}, weights)
            for r in todo:
                res = run_probe({"workload": r["workload"], "arch": arch, "n": r["n"], "batch": r["batch"],
                                 "threads": r["threads"], "seed": args.seed, "layout": layout,
                                 "tune_allocator": args.allocator_tuned, "weights": str(weights)})
                r["peak_rss_mib"] = None if res is None else res["peak_rss_mib"]
    out["scaling"] = rows
    out["layers"] = roof["rows"]
    return out


# ---------------------------------------------------------------------------- output

def plot(rows: list[dict], path: Path) -> bool:
    try:
        from matplotlib.figure import Figure

        from abcrown_plugins.report import save_figure
    except ImportError:  # matplotlib absent
        return False
    fig = Figure(figsize=(11, 7.5), dpi=120)
    axes = fig.subplots(2, 2)
    panels = [("certify", "us_per_sample", "certify: time per noisy sample (us)"),
              ("certify", "peak_rss_mib", "certify: peak RSS growth (MiB)"),
              ("ibp", "us_per_sample", "IBP: time per image (us)"),
              ("ibp", "peak_rss_mib", "IBP: peak RSS growth (MiB)")]
    for ax, (work, col, title) in zip(axes.flat, panels):
        series: dict = {}
        for r in rows:
            if r["workload"] != work or r[col] is None:
                continue
            if work == "certify" and r["n"] != max(x["n"] for x in rows if x["workload"] == "certify"
                                                   and x["batch"] == r["batch"]):
                continue
            series.setdefault((r["model"], r["threads"]), []).append((r["batch"], r[col]))
        for (model, t), pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{model}, {t} thread(s)")
        ax.set_xscale("log")
        ax.set_xlabel("batch size")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def scaling_markdown(rows: list[dict]) -> str:
    cols = ["model", "workload", "threads", "n", "batch", "time_s", "us_per_sample", "peak_rss_mib"]
    heads = ["Model", "Workload", "Threads", "n", "Batch", "Time (s, median)", "us / sample", "Peak RSS (MiB)"]
    return markdown_table(rows, cols, heads, digits=3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="noisy samples per certify measurement")
    ap.add_argument("--batches", default="25,50,100,200,500,1000,2000", help="certify batch sweep (and roofline)")
    ap.add_argument("--scaling-n", default="500", help="extra n values timed at the chosen batch")
    ap.add_argument("--ibp-batch", type=int, default=None,
                    help="batch of ibp_over_forward (default: the verification's calibrated batch, "
                         f"verification.evaluate.verify_batch_size at 1 thread, else {DEFAULT_IBP_BATCH})")
    ap.add_argument("--ibp-batches", default="16,64,256,1024", help="IBP batches of the scaling table")
    ap.add_argument("--threads", default="1,all", help="thread counts ('all' = the usable cores)")
    ap.add_argument("--models", default="cnn_7layer", help="comma-separated zoo models (e.g. cnn_7layer,resnet18_nr)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved timed repetitions per figure")
    ap.add_argument("--layout", choices=["project", *sorted(FORMATS)], default="project",
                    help="the network's layout for certify and IBP (project: the smoothing run's measured choice, "
                         "smoothing.run.certify_layout, else nchw); the other layout is timed at the chosen batch "
                         "for comparison; batches are NCHW; the differential engine runs in NCHW")
    ap.add_argument("--allocator", choices=("project", "default"), default="project",
                    help="project: the allocator setting of the project's processes (tuning.tune_allocator); "
                         "default: glibc's")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory probes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/bench_throughput")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    args.threads = sorted({cores if t == "all" else int(t) for t in args.threads.split(",")})
    args.batches = sorted({int(b) for b in args.batches.split(",")})
    args.scaling_n = sorted({int(n) for n in args.scaling_n.split(",") if n})
    args.ibp_batches = sorted({int(b) for b in args.ibp_batches.split(",")})
    set_progress(False)
    args.allocator_tuned = bool(args.allocator == "project" and tune_allocator is not None and tune_allocator())
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    results = {arch: bench_model(arch, args, log) for arch in args.models.split(",")}
    out = Path(args.out)
    rows = [r for res in results.values() for r in res["scaling"]]
    cols = ["model", "workload", "n", "batch", "threads", "time_s", "time_min_s", "time_max_s", "us_per_sample",
            "peak_rss_mib"]
    write_csv(out / "scaling.csv", rows, cols)
    layer_rows = [{"model": a, **r, "gflops_spread": "-".join(map(str, r["gflops_spread"]))}
                  for a, res in results.items() for r in res["layers"]]
    write_csv(out / "layers.csv", layer_rows, ["model", "layer", "kind", "in_shape", "threads", "mflop_per_sample",
                                               "best_batch", "best_layout", "gflops", "gflops_nchw_best",
                                               "gflops_spread"])
    md = scaling_markdown(rows)
    write_markdown(out / "scaling.md", md)
    plotted = plot(rows, out / "scaling.png")
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    head = results.get("cnn_7layer") or next(iter(results.values()))
    ts = [str(t) for t in args.threads]
    one, many = ts[0], ts[-1]
    frac = head["certify_roofline_fraction"]
    if any(head["contended"].values()):
        log("warning: other processes took the cores during the timings (certify_cpu_per_wall below the thread "
            f"count: {head['certify_cpu_per_wall']}); those thread counts' figures measure the load")
    chosen = head["chosen_over_best"]
    ibp = head["ibp_over_forward"]
    summary = {
        "benchmark": "throughput", "model": head["model"], "models": list(results), "n": args.n,
        "sigma": SIGMA, "reps": args.reps, "threads": args.threads, "batches": args.batches,
        "cpu": platform.processor() or platform.machine(), "cores": cores, "torch": torch.__version__,
        "calibration_available": choose_batch_size is not None, "allocator_tuned": args.allocator_tuned,
        "loadavg_start": [round(v, 2) for v in load_start], "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "wall_s": round(time.perf_counter() - t0, 1),
        **{k: v for k, v in head.items() if k not in ("scaling", "layers", "model")},
        "targets": TARGETS,
        "meets_certify_1_thread": frac[one] >= TARGETS["certify_1_thread"],
        "meets_certify_all_threads": frac[many] >= TARGETS["certify_all_threads"],
        "meets_ibp_over_forward": all(v <= TARGETS["ibp_over_forward"] for v in ibp.values()),
        "meets_chosen_over_best": None if chosen is None else all(v <= TARGETS["chosen_over_best"]
                                                                  for v in chosen.values()),
        "shortfall": {"certify_1_thread": round(max(0.0, TARGETS["certify_1_thread"] - frac[one]), 3),
                      "certify_all_threads": round(max(0.0, TARGETS["certify_all_threads"] - frac[many]), 3),
                      "ibp_over_forward": round(max(0.0, max(ibp.values()) - TARGETS["ibp_over_forward"]), 3),
                      "chosen_over_best": None if chosen is None else
                      round(max(0.0, max(chosen.values()) - TARGETS["chosen_over_best"]), 3)},
        "other_models": {a: {k: res[k] for k in ("conv_ceiling_gflops", "certify_roofline_fraction",
                                                  "ibp_over_forward", "chosen_over_best")}
                         for a, res in results.items() if res is not head},
        "scaling_csv": str(out / "scaling.csv"), "scaling_md": str(out / "scaling.md"),
        "plot": str(out / "scaling.png") if plotted else None, "layers_csv": str(out / "layers.csv"),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
