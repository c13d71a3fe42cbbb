"""Commands of the α,β-CROWN integration: export, vnncomp run / run-instance / results."""

from __future__ import annotations

import json
from pathlib import Path

from abcrown_plugins.abcrown.results import read_results_pickle, results_rows
from abcrown_plugins.abcrown.vnncomp import RESULTS, run_benchmark, run_single
from abcrown_plugins.executor import ExecutorSettings
from abcrown_plugins.experiments import run_export
from abcrown_plugins.export import parse_eps
from abcrown_plugins.report import markdown_table, write_csv


def _cmd_export(args) -> int:
    eps = None if args.eps is None else parse_eps(args.eps)
    summary = run_export(args.checkpoint, args.out, args.n, eps, args.seed, args.timeout, data_root=args.data_root,
                         force=args.force, dataset=args.dataset, vnnlib_version=args.vnnlib_version)
    what = (f"eps {summary['eps']:.6g}" if summary["source"] == "draw"
            else f"properties copied from {summary['copied_from']['folder']}")
    print(f"wrote {summary['instances']} instances to {summary['out']} (onnx {summary['onnx']}, "
          f"max |onnx - torch| {summary['onnx_max_abs_diff']:.2g}, VNN-LIB {summary['vnnlib_version']}.0, {what})")
    print(json.dumps({k: summary[k] for k in ("out", "onnx", "instances", "eps", "seed", "timeout", "compacted",
                                               "onnx_max_abs_diff", "vnnlib_version", "source")}))
    return 0


def _cmd_vnncomp_run(args) -> int:
    out = Path(args.out) if args.out else Path(args.folder) / "abcrown_results"
    executor = ExecutorSettings(kind=args.executor or "local", workers=args.workers or 1,
                                ray_address=args.ray_address)
    results = run_benchmark(args.folder, out, args.abcrown_config, args.timeout_scale, args.limit, executor)
    counts = {k: sum(r.result == k for r in results) for k in RESULTS}
    print(f"results: {out}/results.csv, {out}/results.md")
    print(json.dumps({"out": str(out), "instances": len(results), **counts}))
    return 0


def _cmd_vnncomp_instance(args) -> int:
    result, wall, note = run_single(args.onnx, args.vnnlib, args.results_file, args.timeout, args.abcrown_config)
    print(f"{result} in {wall:.1f} s" + (f" ({note})" if note else ""))
    return 0


def _cmd_vnncomp_results(args) -> int:
    rows = results_rows(read_results_pickle(args.pickle))
    out = Path(args.out) if args.out else Path(args.pickle).with_suffix(".csv")
    write_csv(out, rows, ["index", "abcrown_result", "result", "time_s"])
    print(markdown_table(rows, ["index", "abcrown_result", "result", "time_s"], digits=2))
    print(f"wrote {out}")
    return 0
