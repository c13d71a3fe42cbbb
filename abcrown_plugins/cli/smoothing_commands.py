"""Commands of randomized smoothing and sparse transfer: certify, transfer."""

from __future__ import annotations

import json
import sys

from abcrown_plugins.cli.common import PROG, config_from
from abcrown_plugins.experiments import SUMMARY_COLUMNS, run_certify, run_transfer
from abcrown_plugins.report import markdown_table
from abcrown_plugins.runtime import set_progress


def _warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


def _cmd_certify(args) -> int:
    cfg = config_from(args)
    set_progress(cfg.general.progress)
    res = run_certify(cfg, args.checkpoint, args.output, warn=_warn)
    out, settings = res.out, res.settings
    print(f"{len(res.rows)} examples of {res.dataset} ({settings.split}); {settings.guarantee()}")
    print(markdown_table(res.table, ["radius", "certified_acc"], ["L2 radius", "certified accuracy"]))
    print(f"results: {out}/certify.tsv, {out}/certified_accuracy.md, {out}/certified_accuracy.png")
    print(json.dumps({"output": str(out), "examples": len(res.rows), "alpha": settings.alpha,
                      "sigma": settings.sigma, "certified_acc": {f"{r['radius']:g}": r["certified_acc"]
                                                                 for r in res.table}}))
    return 0


def _cmd_transfer(args) -> int:
    cfg = config_from(args)
    set_progress(cfg.general.progress)
    out, rows = run_transfer(cfg, args.output, warn=_warn)
    print(markdown_table(rows, SUMMARY_COLUMNS))
    print(f"results: {out}/summary.csv, {out}/summary.md; checkpoints under {out}/<task>/<run>/checkpoint.pt")
    print(json.dumps({"output": str(out), "runs": len(rows)}))
    return 0


def register(sub) -> None:
    ce = sub.add_parser("certify", help="randomized-smoothing certification (L2) of a checkpoint on a data split")
    ce.add_argument("--checkpoint", required=True, help="checkpoint written by run/train/transfer")
    ce.add_argument("--config", help="optional YAML config (smoothing.*, data.root, general.seed)")
    ce.add_argument("--output", help="output folder (default: results/certify-CKPT-HASH)")
    ce.set_defaults(func=_cmd_certify)

    tr = sub.add_parser("transfer", help="pretrain on synthetic attributes, fine-tune sparse deltas per task")
    tr.add_argument("config", help="YAML config (e.g. exp_configs/transfer/synthetic_cpu.yaml)")
    tr.add_argument("--output", help="output folder (default: results/NAME-HASH)")
    tr.set_defaults(func=_cmd_transfer)
