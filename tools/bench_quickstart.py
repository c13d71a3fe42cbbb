"""Time the quickstart (the main job) from scratch; last line: one JSON object.

    python tools/bench_quickstart.py [--config exp_configs/quickstart.yaml] [--threads 2]

Runs the pipeline in a fresh temporary output folder in this process and
reports the wall time against the 180 s target, plus the per-round figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from abcrown_plugins.config import load_config
from abcrown_plugins.experiments import run_pruning
from abcrown_plugins.runtime import set_progress

TARGET_S = 180.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "exp_configs" / "quickstart.yaml"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    cfg = load_config(args.config, [("general.progress", False), ("general.num_threads", args.threads)])
    set_progress(False)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _, rows = run_pruning(cfg, Path(tmp) / "out")
        wall = time.perf_counter() - start
    for r in rows:
        print(f"round {r['round']}: remain {r['remain_ratio']:.3f} clean {r['std_acc']:.3f} "
              f"verified {r['verified_acc']:.3f} time {r['time_s']:.1f}s", file=sys.stderr)
    print(json.dumps({
        "benchmark": "quickstart", "config": args.config, "wall_s": round(wall, 2), "target_s": TARGET_S,
        "within_target": wall < TARGET_S, "torch_threads": torch.get_num_threads(), "cpu": platform.processor(),
        "rounds": [{k: r[k] for k in ("round", "remain_ratio", "std_acc", "verified_acc", "unstable_ratio",
                                      "time_s")} for r in rows],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
