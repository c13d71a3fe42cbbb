"""Benchmark the pruning toolkit; last line: one JSON object.

    flock /tmp/abcrown_bench.lock python tools/bench_pruning.py [--threads 1] [--reps 10]

* ``nrs_overhead_ibp``: training-step time with NRSLoss / without, IBP certified training
  of cnn_7layer at the full radius (the regulariser reuses the objective's bounds);
  target <= 1.1 (``details.nrs_term_s``: the NRSLoss term alone, forward and backward, on
  recorded bounds);
* ``nrs_overhead_adv``: the same under FGSM+GradAlign (NRSLoss needs its own IBP pass);
  target <= 1.5;
* ``flop_ratio``: MACs of the masked cnn_7layer (every prunable conv keeps the half of its
  channels with the largest |gamma|: ``pruning.strategy layerwise``) / MACs of its
  physically compacted copy;
* ``compaction_speedup``: time of IBP verification (margin bounds, eval mode, one batch of
  ``--verify-batch``, the default ``verification.batch_size``) of the masked model / of
  the compacted one; target >= 0.8 x flop_ratio. ``details.global_mask`` repeats both
  for a 50% mask ranked across layers (``pruning.strategy global``), whose odd widths
  (20, 37, 26, 68, 57) run less efficiently in oneDNN's convolutions.

Timings are medians over interleaved repetitions (``--reps``) after a warm-up, on
synthetic data, so they measure compute, not data loading. Every figure has a ``*_spread``
field: ``[min, max]`` over the repetitions (for a ratio: of the per-repetition ratios, the
two timings of one repetition run back to back). The machine should be
otherwise idle (hence the flock): the ratios move by several percent under load.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import torch

from abcrown_plugins.bounds import input_box, interval_propagate, margin_spec
from abcrown_plugins.data import load_dataset
from abcrown_plugins.models import model_for
from abcrown_plugins.pruning.channels import bn_of, channel_density, ones_channel_mask, prune_channels_by_score
from abcrown_plugins.pruning.channels import channel_to_weight_mask
from abcrown_plugins.pruning.compaction import compact
from abcrown_plugins.pruning.flops import count_macs
from abcrown_plugins.regularizers import StabilityTerm, nrs_loss
from abcrown_plugins.training import TrainSettings, backward_step, ibp_init, make_objective
from abcrown_plugins.config import build_config


def _step_timer(model, objective, reg, x, y, eps, opt):
    regs = [reg] if reg is not None else []

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        backward_step(model, objective, regs, x, y, eps, eps)  # the training loop's own step
        opt.step()
        return time.perf_counter() - t0
    return step


def overhead(method: str, x, y, eps: float, steps: int) -> dict:
    cfg = build_config({"training": {"method": method, "eps": eps}, "model": {"arch": "cnn_7layer"}})
    s = TrainSettings.from_config(cfg)
    torch.manual_seed(0)
    info = load_dataset("synthetic", "test", num=1).info
    model = model_for("cnn_7layer", info)
    ibp_init(model)
    model.train()
    objective = make_objective(s, info.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)  # tiny steps: the network stays comparable
    plain = _step_timer(model, objective, None, x, y, eps, opt)
    nrs = _step_timer(model, objective, StabilityTerm("nrs", 0.01), x, y, eps, opt)
    for f in (plain, nrs):
        f()
    a, b = [], []
    for _ in range(steps):  # interleaved, so drift hits both alike
        a.append(plain())
        b.append(nrs())
    out = {"without_s": statistics.median(a), "with_s": statistics.median(b),
           "ratio": statistics.median(b) / statistics.median(a),
           "without_spread": _spread(a), "with_spread": _spread(b), "ratio_spread": _ratio_spread(b, a)}
    if method == "ibp":
        out["nrs_term_s"], out["nrs_term_spread"] = _nrs_term_time(model, x, eps, steps)
    return out


def _spread(ts: list[float], digits: int = 4) -> list[float]:
    """``[min, max]`` over the repetitions."""
    return [round(min(ts), digits), round(max(ts), digits)]


def _ratio_spread(num: list[float], den: list[float]) -> list[float]:
    """``[min, max]`` of the per-repetition ratios."""
    return _spread([p / q for p, q in zip(num, den)], 3)


def _nrs_term_time(model, x, eps: float, steps: int) -> tuple[float, list[float]]:
    """Forward and backward of the NRSLoss term alone, on bounds an IBP pass recorded: (median, [min, max])."""
    lower, upper = input_box(x, eps)
    relus = interval_propagate(model, lower, upper, record=True).relus
    leaves = []
    for r in relus:  # cut the graph at the recorded bounds: only the term itself is timed
        r.lower, r.upper = r.lower.detach(), r.upper.detach()
        if r.pre_bn_mid is not None:
            r.pre_bn_mid = r.pre_bn_mid.detach().requires_grad_()
            r.pre_bn_rad = r.pre_bn_rad.detach().requires_grad_()
            r.bn_mean, r.bn_var = r.bn_mean.detach(), r.bn_var.detach()
            leaves += [r.pre_bn_mid, r.pre_bn_rad]
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        torch.autograd.grad(nrs_loss(relus), leaves)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), _spread(times[1:])


@torch.no_grad()
def compaction(x, y, eps: float, steps: int, strategy: str) -> dict:
    torch.manual_seed(0)
    info = load_dataset("synthetic", "test", num=1).info
    model = model_for("cnn_7layer", info).eval()
    for bn in bn_of(model).values():
        bn.weight.uniform_(0.1, 1.0)
        bn.running_var.uniform_(0.5, 1.5)
    scores = {c: bn.weight.abs() for c, bn in bn_of(model).items()}
    cmask = prune_channels_by_score(model, ones_channel_mask(model), scores, 0.5, strategy)
    channel_to_weight_mask(model, cmask).apply_(model)
    small = compact(model, cmask)
    spec = margin_spec(y, info.num_classes)
    lower, upper = input_box(x, eps)
    dense_out = interval_propagate(model, lower, upper, spec=spec, record=False)
    small_out = interval_propagate(small, lower, upper, spec=spec, record=False)
    max_diff = float((dense_out.lower - small_out.lower).abs().max())
    macs_masked, macs_small = count_macs(model, tuple(x.shape[1:])), count_macs(small, tuple(x.shape[1:]))

    def timed(m):
        t0 = time.perf_counter()
        interval_propagate(m, lower, upper, spec=spec, record=False)
        return time.perf_counter() - t0
    timed(model), timed(small)
    a, b = [], []
    for _ in range(steps):
        a.append(timed(model))
        b.append(timed(small))
    flop_ratio = macs_masked / macs_small
    speedup = statistics.median(a) / statistics.median(b)
    widths = [int(cmask[c].sum()) for c in cmask]
    return {"channel_density": channel_density(cmask), "widths": widths, "macs_masked": macs_masked,
            "macs_compacted": macs_small, "flop_ratio": flop_ratio, "masked_s": statistics.median(a),
            "compacted_s": statistics.median(b), "speedup": speedup, "max_bound_diff": max_diff,
            "masked_spread": _spread(a), "compacted_spread": _spread(b), "speedup_spread": _ratio_spread(a, b)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--reps", type=int, default=10,
                    help="interleaved timed repetitions per figure (medians; *_spread fields: [min, max])")
    ap.add_argument("--steps", type=int, default=None, help="deprecated name of --reps")
    ap.add_argument("--batch", type=int, default=64, help="training batch size")
    ap.add_argument("--verify-batch", type=int, default=256, help="verification batch size")
    args = ap.parse_args()
    if args.steps is not None:
        warnings.warn("--steps is deprecated; use --reps", DeprecationWarning, stacklevel=1)
        args.reps = args.steps
    args.reps = max(1, args.reps)
    torch.set_num_threads(args.threads)
    data = load_dataset("synthetic", "test", num=max(args.batch, args.verify_batch))
    x, y = next(data.batches(args.batch))
    xv, yv = next(data.batches(args.verify_batch))
    eps = 2 / 255
    ibp = overhead("ibp", x, y, eps, args.reps)
    adv = overhead("fgsm", x, y, eps, args.reps)
    comp = compaction(xv, yv, eps, args.reps, "layerwise")
    comp_global = compaction(xv, yv, eps, args.reps, "global")
    result = {
        "benchmark": "pruning", "model": "cnn_7layer", "input": "3x32x32", "batch": args.batch,
        "verify_batch": args.verify_batch, "reps": args.reps, "torch_threads": torch.get_num_threads(), "cpu": platform.processor(),
        "nrs_overhead_ibp": round(ibp["ratio"], 3), "nrs_overhead_ibp_target": 1.1,
        "nrs_overhead_ibp_spread": ibp["ratio_spread"],
        "nrs_overhead_adv": round(adv["ratio"], 3), "nrs_overhead_adv_target": 1.5,
        "nrs_overhead_adv_spread": adv["ratio_spread"],
        "flop_ratio": round(comp["flop_ratio"], 3), "compaction_speedup": round(comp["speedup"], 3),
        "compaction_speedup_spread": comp["speedup_spread"],
        "compaction_speedup_target": round(0.8 * comp["flop_ratio"], 3),
        "within_targets": {"nrs_overhead_ibp": ibp["ratio"] <= 1.1, "nrs_overhead_adv": adv["ratio"] <= 1.5,
                           "compaction_speedup": comp["speedup"] >= 0.8 * comp["flop_ratio"]},
        "details": {"ibp_step_s": [round(ibp["without_s"], 4), round(ibp["with_s"], 4)],
                    "ibp_step_s_spread": [ibp["without_spread"], ibp["with_spread"]],
                    "nrs_term_s": round(ibp["nrs_term_s"], 4), "nrs_term_s_spread": ibp["nrs_term_spread"],
                    "adv_step_s": [round(adv["without_s"], 4), round(adv["with_s"], 4)],
                    "adv_step_s_spread": [adv["without_spread"], adv["with_spread"]],
                    "ibp_verify_s": [round(comp["masked_s"], 4), round(comp["compacted_s"], 4)],
                    "ibp_verify_s_spread": [comp["masked_spread"], comp["compacted_spread"]],
                    "channel_density": round(comp["channel_density"], 4), "widths": comp["widths"],
                    "macs": [comp["macs_masked"], comp["macs_compacted"]],
                    "max_bound_diff_masked_vs_compacted": comp["max_bound_diff"],
                    "global_mask": {"widths": comp_global["widths"], "flop_ratio": round(comp_global["flop_ratio"], 3),
                                    "compaction_speedup": round(comp_global["speedup"], 3),
                                    "compaction_speedup_spread": comp_global["speedup_spread"],
                                    "ibp_verify_s": [round(comp_global["masked_s"], 4),
                                                     round(comp_global["compacted_s"], 4)]}},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
