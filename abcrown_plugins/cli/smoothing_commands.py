"""Commands of randomized smoothing and sparse transfer: certify, transfer."""

from __future__ import annotations

import json

from abcrown_plugins.cli.common import config_from, warn
from abcrown_plugins.experiments import SUMMARY_COLUMNS, run_certify, run_transfer
from abcrown_plugins.report import markdown_table
from abcrown_plugins.runtime import set_progress


def _cmd_certify(args) -> int:
    cfg = config_from(args)
    set_progress(cfg.general.progress)
    res = run_certify(cfg, args.checkpoint, args.output, warn=warn)
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
    out, rows = run_transfer(cfg, args.output, warn=warn)
    print(markdown_table(rows, SUMMARY_COLUMNS))
    print(f"results: {out}/summary.csv, {out}/summary.md; checkpoints under {out}/<task>/<run>/checkpoint.pt")
    print(json.dumps({"output": str(out), "runs": len(rows)}))
    return 0
