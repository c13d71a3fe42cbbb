"""The command line's grammar: every sub-command, its arguments and the handler that runs it.

Only argparse lives here. A handler is named ``"MODULE:FUNCTION"`` (a module of
:mod:`abcrown_plugins.cli`) and imported when its command runs, so
``abcrown-plugins --help`` and argument errors answer at once instead of first
importing torch, onnx and the rest of the package.
"""

from __future__ import annotations

from abcrown_plugins.cli.common import Parser, add_executor_args

__all__ = ["register_all"]


def _register_pipeline(sub) -> None:

    run = sub.add_parser("run", help="train, prune in rounds and verify, as the YAML config says")
    run.add_argument("config", help="YAML config (e.g. exp_configs/quickstart.yaml)")
    run.add_argument("--output", help="output folder (default: results/NAME-HASH)")
    add_executor_args(run)
    run.set_defaults(func="pipeline_commands:_cmd_run")

    tr = sub.add_parser("train", help="train one network (no pruning) and verify it")
    tr.add_argument("config", help="YAML config")
    tr.add_argument("--output", help="output folder (default: results/NAME-HASH)")
    add_executor_args(tr)
    tr.set_defaults(func="pipeline_commands:_cmd_train")

    ve = sub.add_parser("verify", help="clean and IBP/CROWN-verified accuracy of a checkpoint")
    ve.add_argument("--checkpoint", required=True, help="checkpoint written by run/train")
    ve.add_argument("--config", help="optional YAML config (data.root, verification.*)")
    ve.add_argument("--eps", help="L-inf radius in [0,1] pixels, e.g. 2/255 (default: verification.eps if set, "
                                  "else the checkpoint's own eps)")
    ve.add_argument("--output", help="folder for α,β-CROWN's files (verification.method abcrown; "
                                     "default: results/verify-CKPT-HASH)")
    add_executor_args(ve)
    ve.set_defaults(func="pipeline_commands:_cmd_verify")

    sw = sub.add_parser("sweep", help="a grid of runs (methods x seeds x ...) and one aggregated report")
    sw.add_argument("sweep", help="sweep YAML (e.g. exp_configs/sweeps/synthetic_small.yaml)")
    sw.add_argument("--output", help="output folder (default: results/sweep-NAME-HASH)")
    sw.add_argument("--dry-run", action="store_true", help="list the cells and their overrides, run nothing")
    add_executor_args(sw)
    sw.set_defaults(func="pipeline_commands:_cmd_sweep", no_overrides=True)

    co = sub.add_parser("config", help="print the config reference (--dump) or a resolved config")
    co.add_argument("config", nargs="?", help="YAML config to resolve (with overrides)")
    co.add_argument("--dump", action="store_true", help="print every key with its default and help")
    co.set_defaults(func="pipeline_commands:_cmd_config")

    mo = sub.add_parser("models", help="list the model zoo")
    mo.set_defaults(func="pipeline_commands:_cmd_models", no_overrides=True)


def _register_abcrown(sub) -> None:
    ex = sub.add_parser("export", help="write a VNN-COMP benchmark folder (onnx/, vnnlib/, instances.csv)")
    ex.add_argument("--checkpoint", required=True, help="checkpoint written by run/train")
    ex.add_argument("--out", required=True, help="benchmark folder to write")
    ex.add_argument("--n", type=int, help="number of instances (correctly classified test images); required "
                                          "unless --dataset vnnlib:DIR (default there: all its properties)")
    ex.add_argument("--eps", help="L-inf radius in [0,1] pixels, e.g. 2/255; required unless --dataset vnnlib:DIR")
    ex.add_argument("--seed", type=int, default=0, help="seed of the drawn test images")
    ex.add_argument("--timeout", type=float, default=60.0, help="per-instance timeout in seconds (total <= 6 h)")
    ex.add_argument("--data-root", help="folder of real data set files (as data.root)")
    ex.add_argument("--dataset", help="data set whose test split gives the properties (default: the checkpoint's); "
                                      "vnnlib:DIR copies the properties of benchmark DIR, same boxes and labels")
    ex.add_argument("--vnnlib-version", type=int, choices=(1, 2), default=1,
                    help="VNN-LIB version of the property files: 1 (what α,β-CROWN reads; default) or 2")
    ex.add_argument("--force", action="store_true", help="replace an existing, non-empty output folder")
    ex.set_defaults(func="abcrown_commands:_cmd_export", no_overrides=True)

    vn = sub.add_parser("vnncomp", help="run α,β-CROWN on VNN-COMP benchmark folders")
    vsub = vn.add_subparsers(dest="vnncomp_command", metavar="ACTION", parser_class=Parser)
    vsub.required = True
    run = vsub.add_parser("run", help="run every instance of a benchmark folder (needs ABCROWN_HOME)")
    run.add_argument("folder", help="benchmark folder with instances.csv")
    run.add_argument("--out", help="results folder (default: FOLDER/abcrown_results)")
    run.add_argument("--abcrown-config", help="α,β-CROWN YAML for every instance (default: CPU-sized settings)")
    run.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every instance timeout")
    run.add_argument("--limit", type=int, help="run only the first N instances")
    add_executor_args(run)
    run.set_defaults(func="abcrown_commands:_cmd_vnncomp_run", no_overrides=True)
    one = vsub.add_parser("run-instance", help="one instance, VNN-COMP run_instance.sh style")
    one.add_argument("onnx")
    one.add_argument("vnnlib")
    one.add_argument("results_file")
    one.add_argument("timeout")
    one.add_argument("--abcrown-config", help="α,β-CROWN YAML (default: CPU-sized settings)")
    one.set_defaults(func="abcrown_commands:_cmd_vnncomp_instance", no_overrides=True)
    res = vsub.add_parser("results", help="α,β-CROWN's results pickle (csv/data modes) as CSV and a table")
    res.add_argument("pickle", help="general.results_file of a csv-mode run")
    res.add_argument("--out", help="CSV to write (default: PICKLE with .csv)")
    res.set_defaults(func="abcrown_commands:_cmd_vnncomp_results", no_overrides=True)


def _register_smoothing(sub) -> None:
    ce = sub.add_parser("certify", help="randomized-smoothing certification (L2) of a checkpoint on a data split")
    ce.add_argument("--checkpoint", required=True, nargs="+", metavar="CKPT",
                    help="checkpoint written by run/train/transfer; with --smoothing.engine differential, one or "
                         "more downstream checkpoints of one base (several: certified together, multi-task)")
    ce.add_argument("--config", help="optional YAML config (smoothing.*, data.root, general.seed)")
    ce.add_argument("--output", help="output folder (default: results/certify-CKPT-HASH)")
    add_executor_args(ce)
    ce.set_defaults(func="smoothing_commands:_cmd_certify")

    tr = sub.add_parser("transfer", help="pretrain on synthetic attributes, fine-tune sparse deltas per task")
    tr.add_argument("config", help="YAML config (e.g. exp_configs/transfer/synthetic_cpu.yaml)")
    tr.add_argument("--output", help="output folder (default: results/NAME-HASH)")
    tr.set_defaults(func="smoothing_commands:_cmd_transfer")


def _register_pruning(sub) -> None:
    me = sub.add_parser("methods", help="list the pruning methods (and with --all criteria, regularisers, "
                                        "training methods)")
    me.add_argument("--all", action="store_true", help="also list criteria, regularisers and training methods")
    me.set_defaults(func="pruning_commands:_cmd_methods", no_overrides=True)


def register_all(sub) -> None:
    """Add every sub-command to ``sub`` (an argparse sub-parsers action)."""
    for register in (_register_pipeline, _register_abcrown, _register_smoothing, _register_pruning):
        register(sub)
