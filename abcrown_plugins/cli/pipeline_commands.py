"""Commands of the core pipeline: run, train, verify, config, models."""

from __future__ import annotations

import json
import sys

import model_zoo
from abcrown_plugins.cli.common import config_from
from abcrown_plugins.config import dump_config, dump_reference, load_config, parse_override_args
from abcrown_plugins.experiments import last_checkpoint, run_pruning, run_verify
from abcrown_plugins.report import markdown_table
from abcrown_plugins.runtime import set_progress


def _cmd_run(args) -> int:
    cfg = config_from(args)
    set_progress(cfg.general.progress)
    out, rows = run_pruning(cfg, args.output)
    print(markdown_table(rows, ["round", "remain_ratio", "std_acc", "verified_acc", "unstable_ratio", "time_s"]))
    print(f"results: {out}/summary.csv, {out}/summary.md" + (f", {out}/verified_acc.png" if cfg.output.plot else ""))
    print(json.dumps({"output": str(out), "rounds": len(rows), "final": rows[-1]}))
    return 0


def _cmd_train(args) -> int:
    cfg = config_from(args).replace(pruning={"rounds": 0})
    set_progress(cfg.general.progress)
    out, rows = run_pruning(cfg, args.output)
    r = rows[-1]
    print(f"checkpoint: {last_checkpoint(out, cfg)}")
    print(f"clean accuracy {r['std_acc']:.2%}, verified accuracy {r['verified_acc']:.2%} at eps {r['eps']:.6g}")
    return 0


def _cmd_verify(args) -> int:
    overrides = parse_override_args(args.overrides)
    if args.eps is not None:
        overrides.append(("verification.eps", args.eps))
    cfg = load_config(args.config, overrides)
    set_progress(cfg.general.progress)
    res, meta = run_verify(cfg, args.checkpoint)
    v = cfg.verification
    print(f"{args.checkpoint}: {res.n} test images of {meta.dataset}, eps {v.eps:.6g} "
          f"({v.eps * 255:.3g}/255), {v.method.upper()}")
    print(f"  clean accuracy    {res.std_acc:.2%}")
    print(f"  verified accuracy {res.verified_acc:.2%}")
    print(f"  unstable ReLUs    {res.unstable_ratio:.2%}")
    print(json.dumps(res.as_dict()))
    return 0


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


def register(sub) -> None:

    run = sub.add_parser("run", help="train, prune in rounds and verify, as the YAML config says")
    run.add_argument("config", help="YAML config (e.g. exp_configs/quickstart.yaml)")
    run.add_argument("--output", help="output folder (default: results/NAME-HASH)")
    run.set_defaults(func=_cmd_run)

    tr = sub.add_parser("train", help="train one network (no pruning) and verify it")
    tr.add_argument("config", help="YAML config")
    tr.add_argument("--output", help="output folder (default: results/NAME-HASH)")
    tr.set_defaults(func=_cmd_train)

    ve = sub.add_parser("verify", help="clean and IBP/CROWN-verified accuracy of a checkpoint")
    ve.add_argument("--checkpoint", required=True, help="checkpoint written by run/train")
    ve.add_argument("--config", help="optional YAML config (data.root, verification.*)")
    ve.add_argument("--eps", help="L-inf radius in [0,1] pixels, e.g. 2/255 (overrides verification.eps)")
    ve.set_defaults(func=_cmd_verify)

    co = sub.add_parser("config", help="print the config reference (--dump) or a resolved config")
    co.add_argument("config", nargs="?", help="YAML config to resolve (with overrides)")
    co.add_argument("--dump", action="store_true", help="print every key with its default and help")
    co.set_defaults(func=_cmd_config)

    mo = sub.add_parser("models", help="list the model zoo")
    mo.set_defaults(func=_cmd_models, no_overrides=True)


