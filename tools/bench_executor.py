"""Scale of the executor, measured: one workload serially, on 2 local workers and on a local Ray cluster.

    flock /tmp/abcrown_bench.lock python tools/bench_executor.py [--workload auto|abcrown|certify]
        [--n 12] [--reps 3] [--workers 2] [--out results/bench_executor]

Workloads (``auto``: α,β-CROWN when ABCROWN_HOME/ABCROWN_PYTHON are set, else certify):

- ``abcrown``: a VNN-COMP benchmark exported from ``--checkpoint`` (``--n`` instances at
  ``--eps``) verified by ``vnncomp run``'s code path (one long-lived α,β-CROWN process per
  worker, started inside the timed region);
- ``certify``: randomized smoothing of the first ``--n`` test images of ``--checkpoint``
  (``--samples`` noise samples each), ``certify``'s code path.

Every executor runs the workload twice per repetition, into fresh folders, repetitions
interleaved (serial, local, ray, serial, ...): ``cold`` right after every worker was stopped
(local processes, α,β-CROWN processes, Ray restarted; Ray's own start-up is reported apart in
``ray_start_s``), so it pays each worker's start-up (α,β-CROWN's imports and JIT); ``warm``
right after, on the kept workers, which is what every later batch of a long run (the pruning
loop's rounds, a sweep's cells) costs. Speedup is serial / parallel wall time (medians);
parallel efficiency is speedup / workers (``efficiency``: warm, ``efficiency_cold``: cold).
``identical`` is true only when every executor's results (verdicts, or certify rows without
times) equal the serial run's in every repetition. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from abcrown_plugins.abcrown.abcrown_env import find_abcrown
from abcrown_plugins.abcrown.runner import close_workers
from abcrown_plugins.abcrown.vnncomp import run_benchmark
from abcrown_plugins.config import load_config
from abcrown_plugins.executor import ExecutorSettings, ray_available, shutdown_pools
from abcrown_plugins.experiments import run_certify
from abcrown_plugins.export import export_benchmark, parse_eps


def _abcrown(bench: Path, out: Path, settings: ExecutorSettings) -> list:
    return [(r.index, r.result) for r in run_benchmark(bench, out, executor=settings)]


def _certify(checkpoint: str, n: int, samples: int, out: Path, settings: ExecutorSettings) -> list:
    cfg = load_config(None, [("general.progress", False), ("general.device", "cpu"), ("smoothing.n0", 64),
                             ("smoothing.n", samples), ("smoothing.num_examples", n), ("smoothing.batch_size", 250),
                             ("executor.kind", settings.kind), ("executor.workers", settings.workers)])
    res = run_certify(cfg, checkpoint, out)
    return [(r["idx"], r["predict"], r["radius"]) for r in res.rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("auto", "abcrown", "certify"), default="auto")
    ap.add_argument("--checkpoint", default="zoo:cnn_small_synthetic_quickstart.pt")
    ap.add_argument("--n", type=int, default=12, help="instances (abcrown) or images (certify)")
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--samples", type=int, default=4000, help="noise samples per image (certify)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="results/bench_executor")
    args = ap.parse_args()
    workload = args.workload
    if workload == "auto":
        workload = "abcrown" if find_abcrown() is not None else "certify"
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    executors = {"serial": ExecutorSettings(workers=1),
                 "local": ExecutorSettings(workers=args.workers)}
    ray_start = None
    if ray_available():
        executors["ray"] = ExecutorSettings(kind="ray", workers=args.workers)
    else:
        print("Ray is not installed: the ray executor is skipped", file=sys.stderr)

    def cold_start(name: str) -> float | None:
        """Stop every kept worker; restart Ray for the ray executor (returns Ray's start-up time)."""
        close_workers()
        shutdown_pools()
        if name != "ray":
            return None
        import ray

        ray.shutdown()
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        return time.perf_counter() - t0
    if workload == "abcrown":
        bench = out / "benchmark"
        export_benchmark(args.checkpoint, bench, args.n, parse_eps(args.eps), 0, 60.0)

        def run(name, settings, rep):
            return _abcrown(bench, out / f"{name}_{rep}", settings)
    else:
        def run(name, settings, rep):
            return _certify(args.checkpoint, args.n, args.samples, out / f"{name}_{rep}", settings)

    times = {(name, phase): [] for name in executors for phase in ("cold", "warm")}
    results = []
    ray_starts = []
    for rep in range(args.reps):
        for name, settings in executors.items():
            start = cold_start(name)
            if start is not None:
                ray_starts.append(start)
            for phase in ("cold", "warm"):
                t0 = time.perf_counter()
                results.append(run(f"{name}_{phase}", settings, rep))
                times[(name, phase)].append(time.perf_counter() - t0)
                print(f"rep {rep} {name} {phase}: {times[(name, phase)][-1]:.1f} s", file=sys.stderr)
    cold_start("serial")
    reference = results[0]
    identical = all(r == reference for r in results)
    med = {key: statistics.median(v) for key, v in times.items()}
    report = {"workload": workload, "n": args.n, "workers": args.workers, "cores": os.cpu_count(),
              "reps": args.reps, "identical": identical,
              "ray_start_s": statistics.median(ray_starts) if ray_starts else None,
              "efficiency": {}, "efficiency_cold": {}, "speedup": {}, "speedup_cold": {},
              "seconds": {f"{name}_{phase}": {"median": med[(name, phase)], "min": min(v), "max": max(v)}
                          for (name, phase), v in times.items()}}
    for name in executors:
        if name == "serial":
            continue
        for phase, suffix in (("warm", ""), ("cold", "_cold")):
            speedup = med[("serial", phase)] / med[(name, phase)]
            report[f"speedup{suffix}"][name] = speedup
            report[f"efficiency{suffix}"][name] = speedup / args.workers
    if workload == "abcrown":
        report["verdicts"] = {v: sum(1 for _, r in reference if r == v)
                              for v in ("unsat", "sat", "timeout", "unknown", "error")}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
