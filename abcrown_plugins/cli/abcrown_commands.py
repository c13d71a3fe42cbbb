"""Commands of the α,β-CROWN integration: export, vnncomp run / run-instance / results."""

from __future__ import annotations

import json
from pathlib import Path

from abcrown_plugins.abcrown.results import read_results_pickle, results_rows
from abcrown_plugins.abcrown.vnncomp import RESULTS, run_benchmark, run_single
from abcrown_plugins.cli.common import Parser
from abcrown_plugins.export import export_benchmark, parse_eps
from abcrown_plugins.report import markdown_table, write_csv


def _cmd_export(args) -> int:
    summary = export_benchmark(args.checkpoint, args.out, args.n, parse_eps(args.eps), args.seed, args.timeout,
                               data_root=args.data_root, force=args.force)
    print(f"wrote {summary['instances']} instances to {summary['out']} (onnx {summary['onnx']}, "
          f"max |onnx - torch| {summary['onnx_max_abs_diff']:.2g}, eps {summary['eps']:.6g})")
    print(json.dumps({k: summary[k] for k in ("out", "onnx", "instances", "eps", "seed", "timeout", "compacted",
                                               "onnx_max_abs_diff")}))
    return 0


def _cmd_vnncomp_run(args) -> int:
    out = Path(args.out) if args.out else Path(args.folder) / "abcrown_results"
    results = run_benchmark(args.folder, out, args.abcrown_config, args.timeout_scale, args.limit)
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


def register(sub) -> None:
    ex = sub.add_parser("export", help="write a VNN-COMP benchmark folder (onnx/, vnnlib/, instances.csv)")
    ex.add_argument("--checkpoint", required=True, help="checkpoint written by run/train")
    ex.add_argument("--out", required=True, help="benchmark folder to write")
    ex.add_argument("--n", type=int, required=True, help="number of instances (correctly classified test images)")
    ex.add_argument("--eps", required=True, help="L-inf radius in [0,1] pixels, e.g. 2/255")
    ex.add_argument("--seed", type=int, default=0, help="seed of the drawn test images")
    ex.add_argument("--timeout", type=float, default=60.0, help="per-instance timeout in seconds (total <= 6 h)")
    ex.add_argument("--data-root", help="folder of real data set files (as data.root)")
    ex.add_argument("--force", action="store_true", help="replace an existing, non-empty output folder")
    ex.set_defaults(func=_cmd_export, no_overrides=True)

    vn = sub.add_parser("vnncomp", help="run α,β-CROWN on VNN-COMP benchmark folders")
    vsub = vn.add_subparsers(dest="vnncomp_command", metavar="ACTION", parser_class=Parser)
    vsub.required = True
    run = vsub.add_parser("run", help="run every instance of a benchmark folder (needs ABCROWN_HOME)")
    run.add_argument("folder", help="benchmark folder with instances.csv")
    run.add_argument("--out", help="results folder (default: FOLDER/abcrown_results)")
    run.add_argument("--abcrown-config", help="α,β-CROWN YAML for every instance (default: CPU-sized settings)")
    run.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every instance timeout")
    run.add_argument("--limit", type=int, help="run only the first N instances")
    run.set_defaults(func=_cmd_vnncomp_run, no_overrides=True)
    one = vsub.add_parser("run-instance", help="one instance, VNN-COMP run_instance.sh style")
    one.add_argument("onnx")
    one.add_argument("vnnlib")
    one.add_argument("results_file")
    one.add_argument("timeout")
    one.add_argument("--abcrown-config", help="α,β-CROWN YAML (default: CPU-sized settings)")
    one.set_defaults(func=_cmd_vnncomp_instance, no_overrides=True)
    res = vsub.add_parser("results", help="α,β-CROWN's results pickle (csv/data modes) as CSV and a table")
    res.add_argument("pickle", help="general.results_file of a csv-mode run")
    res.add_argument("--out", help="CSV to write (default: PICKLE with .csv)")
    res.set_defaults(func=_cmd_vnncomp_results, no_overrides=True)
