"""Commands of randomized smoothing and sparse transfer: certify, transfer."""

from __future__ import annotations

import json

from abcrown_plugins.cli.common import config_from, warn
from abcrown_plugins.experiments import run_transfer
from abcrown_plugins.experiments.certify import run_certify_all
from abcrown_plugins.experiments.transfer import seed_table, summary_columns
from abcrown_plugins.report import markdown_table
from abcrown_plugins.runtime import set_progress


def _certify_json(res) -> dict:
    out = {"output": str(res.out), "examples": len(res.rows), "alpha": res.settings.alpha,
           "sigma": res.settings.sigma, "certified_acc": {f"{r['radius']:g}": r["certified_acc"] for r in res.table}}
    if res.time_saved is not None:
        out.update({f"time_saved_{k}": res.time_saved[k] for k in ("live", "trace")})
    return out


def _cmd_certify(args) -> int:
    cfg = config_from(args)
    set_progress(cfg.general.progress)
    results = run_certify_all(cfg, args.checkpoint, args.output, warn=warn)
    for res in results:
        settings = res.settings
        print(f"{len(res.rows)} examples of {res.dataset} ({settings.split}); {settings.guarantee()}")
        print(markdown_table(res.table, ["radius", "certified_acc"], ["L2 radius", "certified accuracy"]))
        if res.time_saved is not None:
            print(f"time saved by the differential engine (identical certificates): live "
                  f"{100 * res.time_saved['live']:.1f} %, trace {100 * res.time_saved['trace']:.1f} %")
        print(f"results: {res.out}/certify.tsv, {res.out}/certified_accuracy.md, {res.out}/certified_accuracy.png")
    if len(results) == 1:
        print(json.dumps(_certify_json(results[0])))
        return 0
    multi = results[0].time_saved["multitask"]
    print(f"multi-task: {len(results)} networks in one shared pass, time saved {100 * multi:.1f} %")
    print(json.dumps({"output": str(results[0].out.parent), "time_saved_multitask": multi,
                      "checkpoints": [_certify_json(r) for r in results]}))
    return 0


def _cmd_transfer(args) -> int:
    cfg = config_from(args)
    set_progress(cfg.general.progress)
    out, rows = run_transfer(cfg, args.output, warn=warn)
    print(markdown_table(rows, summary_columns(cfg.smoothing.radii if cfg.transfer.certify else ())))
    if cfg.transfer.certify:
        print()
        print(seed_table(rows, cfg.smoothing.radii))
    print(f"results: {out}/summary.csv, {out}/summary.md; checkpoints under {out}/<task>/<run>/checkpoint.pt")
    print(json.dumps({"output": str(out), "runs": len(rows)}))
    return 0
