"""α,β-CROWN time per instance: a 50%-channel cnn_7layer exported compacted vs. masked dense.

    ABCROWN_HOME=... ABCROWN_PYTHON=... python tools/bench_abcrown.py [--checkpoint zoo:cnn_7layer_synthetic_pruned.pt]
        [--n 5] [--eps 2/255] [--timeout 120] [--out results/bench_abcrown]

Takes a trained cnn_7layer, prunes half of its channels (lowest |BatchNorm gamma|,
global), and exports the *same* network twice: once masked (pruned channels are
zeros, full width) and once compacted (pruned channels removed). Both benchmark
folders get the same instances; α,β-CROWN runs each instance of each, and the
figure is the ratio of α,β-CROWN's own per-instance times (start-up excluded).
Results must agree instance by instance (same function). Target: >= 1.5x.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from abcrown_plugins import checkpoints
from abcrown_plugins.export import export_benchmark, parse_eps
from abcrown_plugins.abcrown.abcrown_env import require_abcrown
from abcrown_plugins.abcrown.vnncomp import run_benchmark
from abcrown_plugins.models import load_model
from abcrown_plugins.pruning.channels import bn_of, channel_density, channel_to_weight_mask, ones_channel_mask, \
    prune_channels_by_score
from abcrown_plugins.pruning.flops import count_macs
from abcrown_plugins.pruning.compaction import compact

TARGET = 1.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="zoo:cnn_7layer_synthetic_pruned.pt")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--eps", default="2/255")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/bench_abcrown")
    args = ap.parse_args()
    require_abcrown()
    out = Path(args.out)
    loaded = load_model(args.checkpoint)
    model = loaded.model
    if loaded.meta.arch != "cnn_7layer":
        print(f"warning: {args.checkpoint} is a {loaded.meta.arch}, not cnn_7layer", file=sys.stderr)
    scores = {name: bn.weight.detach().abs() for name, bn in bn_of(model).items()}
    cmask = prune_channels_by_score(model, ones_channel_mask(model), scores, 0.5)
    channel_to_weight_mask(model, cmask).apply_(model)
    meta = loaded.meta.replace(note="50% channels pruned by |gamma| for bench_abcrown")
    masked_ckpt, compact_ckpt = out / "masked.pt", out / "compacted.pt"
    masks = loaded.checkpoint.masks
    checkpoints.save_model_checkpoint(masked_ckpt, model.state_dict(), meta, masks)
    checkpoints.save_model_checkpoint(compact_ckpt, model.state_dict(), meta, masks, channel_masks=cmask)
    shape = meta.input_shape
    macs_dense, macs_small = count_macs(model, shape), count_macs(compact(model, cmask), shape)

    eps = parse_eps(args.eps)
    runs = {}
    for kind, ckpt in (("masked", masked_ckpt), ("compacted", compact_ckpt)):
        bench = out / f"bench_{kind}"
        export_benchmark(ckpt, bench, args.n, eps, args.seed, args.timeout, force=True)
        runs[kind] = run_benchmark(bench, out / f"results_{kind}")
    pairs = list(zip(runs["masked"], runs["compacted"]))
    agree = all(a.result == b.result for a, b in pairs)
    timed = [(a.abcrown_time_s, b.abcrown_time_s) for a, b in pairs if a.abcrown_time_s and b.abcrown_time_s]
    speedup = sum(a for a, _ in timed) / sum(b for _, b in timed) if timed else None
    wall = sum(a.runtime_s for a, _ in pairs) / max(sum(b.runtime_s for _, b in pairs), 1e-9)
    for (a, b) in pairs:
        print(f"instance {a.index}: masked {a.result} {a.abcrown_time_s}s | compacted {b.result} {b.abcrown_time_s}s",
              file=sys.stderr)
    print(json.dumps({
        "benchmark": "abcrown_compaction", "checkpoint": args.checkpoint, "n": args.n, "eps": eps,
        "channel_density": channel_density(cmask), "mac_ratio": macs_small / macs_dense,
        "results_agree": agree, "results": [a.result for a, _ in pairs],
        "abcrown_time_masked_s": [a for a, _ in timed], "abcrown_time_compacted_s": [b for _, b in timed],
        "median_speedup": statistics.median(a / b for a, b in timed) if timed else None,
        "speedup": speedup, "wall_speedup_incl_startup": wall, "target": TARGET,
        "meets_target": bool(speedup and speedup >= TARGET),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
