"""Commands of the core pipeline: run, train, verify, sweep, config, models."""

from __future__ import annotations

import json
import sys

import model_zoo
from abcrown_plugins.cli.common import config_from, executor_overrides, warn
from abcrown_plugins.config import config_warnings, dump_config, dump_reference, load_config, parse_override_args
from abcrown_plugins.executor import ExecutorSettings
from abcrown_plugins.experiments import last_checkpoint, run_pruning, run_verify
from abcrown_plugins.experiments.sweep import load_sweep, plan_lines, run_sweep
from abcrown_plugins.report import markdown_table
from abcrown_plugins.runtime import set_progress


def _cmd_run(args) -> int:
    cfg = config_from(args)
    set_progress(cfg.general.progress)
    for message in config_warnings(cfg):
        warn(message)
    out, rows = run_pruning(cfg, args.output)
    print(markdown_table(rows, ["round", "remain_ratio", "std_acc", "verified_acc", "unstable_ratio", "time_s"]))
    print(f"results: {out}/summary.csv, {out}/summary.md" + (f", {out}/verified_acc.png" if cfg.output.plot else ""))
    print(json.dumps({"output": str(out), "rounds": len(rows), "final": rows[-1]}))
    return 0


def _cmd_train(args) -> int:
    cfg = config_from(args).replace(pruning={"rounds": 0})
    set_progress(cfg.general.progress)
    for message in config_warnings(cfg):
        warn(message)
    out, rows = run_pruning(cfg, args.output)
    r = rows[-1]
    print(f"checkpoint: {last_checkpoint(out, cfg)}")
    print(f"clean accuracy {r['std_acc']:.2%}, verified accuracy {r['verified_acc']:.2%} at eps {r['eps']:.6g}")
    return 0


def _cmd_verify(args) -> int:
    overrides = parse_override_args(args.overrides) + executor_overrides(args)
    if args.eps is not None:
        overrides.append(("verification.eps", args.eps))
    cfg = load_config(args.config, overrides)
    set_progress(cfg.general.progress)
    res = run_verify(cfg, args.checkpoint, args.output)
    r = res.result
    print(f"{args.checkpoint}: {r.n} test images of {res.meta.dataset}, eps {r.eps:.6g} "
          f"({r.eps * 255:.3g}/255), {r.method.upper()}")
    print(f"  clean accuracy    {r.std_acc:.2%}")
    print(f"  verified accuracy {r.verified_acc:.2%}")
    print(f"  unstable ReLUs    {r.unstable_ratio:.2%}")
    if res.abcrown is not None:
        a = res.abcrown
        print(f"  α,β-CROWN         {a.verified_acc:.2%} verified ({a.safe} safe, {a.unsafe} unsafe, {a.timeout} "
              f"timeout, {a.unknown} unknown, {a.error} error, {a.misclassified} misclassified); "
              f"{res.out}/abcrown.csv")
    print(json.dumps({**r.as_dict(), **(res.abcrown.columns() if res.abcrown else {})}))
    return 0


def _cmd_sweep(args) -> int:
    sweep = load_sweep(args.sweep)
    if args.dry_run:
        print(f"sweep {sweep.name}: {len(sweep.plan)} cells")
        print("\n".join(plan_lines(sweep)))
        return 0
    executor = ExecutorSettings(kind=args.executor or "local", workers=args.workers or 1,
                                ray_address=args.ray_address)
    out, rows, failed = run_sweep(sweep, args.output, executor)
    print((out / "report.md").read_text())
    for line in failed:
        warn(f"cell failed: {line}")
    print(f"results: {out}/sweep.csv, {out}/report.md, {out}/verified_acc.png, {out}/instability.png")
    print(json.dumps({"output": str(out), "cells": len(sweep.plan), "failed": len(failed), "rows": len(rows)}))
    return 1 if failed and len(failed) == len(sweep.plan) else 0


def _cmd_config(args) -> int:
    if args.config is None and not args.overrides:
        sys.stdout.write(dump_reference() + "\n")
    else:
        sys.stdout.write(dump_config(config_from(args)))
    return 0


def _cmd_models(args) -> int:
    width = max(len(n) for n in model_zoo.MODELS)
    for name, entry in sorted(model_zoo.MODELS.items()):
        print(f"{name:<{width}}  {entry.description}")
    return 0
