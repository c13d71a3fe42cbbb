"""Experiments: the runs that chain data, models, training, pruning, certification and reports.

Each experiment is one module with one entry point, and the CLI only parses
and calls it:

- :func:`~.pruning.run_pruning` (``abcrown-plugins run`` / ``train``): train, prune
  in rounds, rewind, verify;
- :func:`~.transfer.run_transfer` (``abcrown-plugins transfer``): pretrain, fine-tune
  sparse deltas per task, certify each;
- :func:`~.certify.run_certify` (``abcrown-plugins certify``): randomized smoothing of
  one checkpoint on its data;
- :func:`~.verify.run_verify` (``abcrown-plugins verify``): IBP/CROWN-verified accuracy of
  one checkpoint on its data (and α,β-CROWN's, on the executor);
- :func:`~.sweep.run_sweep` (``abcrown-plugins sweep``): a grid of pruning runs on the
  executor and one aggregated report.

Every run writes into one folder chosen by one rule and claimed before the
first file is written (:mod:`.rundir`).
"""

from abcrown_plugins.experiments.certify import CertifyResult, run_certify
from abcrown_plugins.experiments.export import run_export
from abcrown_plugins.experiments.pruning import last_checkpoint, run_pruning
from abcrown_plugins.experiments.rundir import claim_run_dir, run_dir
from abcrown_plugins.experiments.sweep import load_sweep, run_sweep
from abcrown_plugins.experiments.transfer import SUMMARY_COLUMNS, load_pair, run_transfer
from abcrown_plugins.experiments.verify import run_verify

__all__ = ["CertifyResult", "SUMMARY_COLUMNS", "claim_run_dir", "last_checkpoint", "load_pair", "load_sweep",
           "run_certify", "run_dir", "run_export", "run_pruning", "run_sweep", "run_transfer", "run_verify"]
