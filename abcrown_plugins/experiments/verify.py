"""The verify run: clean and IBP/CROWN-verified accuracy of a checkpoint on the data it classifies.

The data is the checkpoint's own (:func:`abcrown_plugins.transfer.scenario.dataset_for_checkpoint`:
its data set, or its downstream attribute task with that task's labels); a
multi-head base network is refused with one line.
"""

from __future__ import annotations

from pathlib import Path

from abcrown_plugins.checkpoints import ModelMeta
from abcrown_plugins.config import Config
from abcrown_plugins.models import load_model
from abcrown_plugins.runtime import select_device, set_threads
from abcrown_plugins.transfer.scenario import dataset_for_checkpoint
from abcrown_plugins.verification import evaluate
from abcrown_plugins.verification.evaluate import EvalResult

__all__ = ["run_verify"]


def run_verify(cfg: Config, checkpoint: str | Path) -> tuple[EvalResult, ModelMeta]:
    """Evaluate ``checkpoint`` at ``verification.eps`` with ``verification.method``; the result and its metadata."""
    set_threads(cfg.general.num_threads)
    device = select_device(cfg.general.device)
    loaded = load_model(checkpoint, device=device)
    test_set = dataset_for_checkpoint(loaded.meta, "test", cfg.data.root, cfg.data.num_test, seed=cfg.general.seed)
    v = cfg.verification
    return evaluate(loaded.model, test_set, v.eps, v.method, v.batch_size, v.num_examples, device), loaded.meta
