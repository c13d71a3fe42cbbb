"""Commands of randomized smoothing and sparse transfer: certify, transfer."""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

from abcrown_plugins.cli.common import PROG, config_from


def _warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


def _cmd_certify(args) -> int:
    from abcrown_plugins import checkpoints
    from abcrown_plugins.models import model_from_checkpoint
    from abcrown_plugins.runtime import select_device, set_progress, set_threads
    from abcrown_plugins.smoothing import warn_unreachable
    from abcrown_plugins.smoothing.run import SmoothingSettings, certify_dataset, write_report
    from abcrown_plugins.transfer import dataset_for_checkpoint

    cfg = config_from(args)
    settings = SmoothingSettings.from_config(cfg)
    set_progress(cfg.general.progress)
    set_threads(cfg.general.num_threads)
    device = select_device(cfg.general.device)
    payload = checkpoints.load_model_checkpoint(args.checkpoint)
    model = model_from_checkpoint(payload).to(device).eval()
    dataset = dataset_for_checkpoint(payload["meta"], settings.split, cfg.data.root, cfg.data.num_test,
                                     seed=cfg.general.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msg = warn_unreachable(settings.radii, settings.n, settings.alpha, settings.sigma)
    if msg:
        _warn(msg)
    ckpt = str(Path(args.checkpoint).resolve())
    if args.output:
        out = Path(args.output)
    else:
        tag = hashlib.sha256(ckpt.encode()).hexdigest()[:6]
        out = Path("results") / f"certify-{Path(args.checkpoint).stem}-{tag}-{cfg.hash()}"
    rows = certify_dataset(model, dataset, settings, out, device, seed=cfg.general.seed, tag=f"checkpoint={ckpt}")
    table = write_report(rows, settings, out, title=f"certified accuracy of {Path(args.checkpoint).name}")
    from abcrown_plugins.report import markdown_table

    print(f"{len(rows)} examples of {dataset.info.name} ({settings.split}); {settings.guarantee()}")
    print(markdown_table(table, ["radius", "certified_acc"], ["L2 radius", "certified accuracy"]))
    print(f"results: {out}/certify.tsv, {out}/certified_accuracy.md, {out}/certified_accuracy.png")
    print(json.dumps({"output": str(out), "examples": len(rows), "alpha": settings.alpha, "sigma": settings.sigma,
                      "certified_acc": {f"{r['radius']:g}": r["certified_acc"] for r in table}}))
    return 0


def _cmd_transfer(args) -> int:
    from abcrown_plugins.report import markdown_table
    from abcrown_plugins.runtime import set_progress
    from abcrown_plugins.transfer import SUMMARY_COLUMNS, run_transfer

    cfg = config_from(args)
    set_progress(cfg.general.progress)
    out, rows = run_transfer(cfg, Path(args.output) if args.output else None, warn=_warn)
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
