"""The verify run: clean and IBP/CROWN-verified accuracy of a checkpoint on the data it classifies.

The data is the checkpoint's own (:func:`abcrown_plugins.transfer.scenario.dataset_for_checkpoint`:
its data set, or its downstream attribute task with that task's labels); a
multi-head base network is refused with one line. With ``verification.method
abcrown`` α,β-CROWN also verifies the first ``verification.num_examples`` images
(the network compacted when channel-pruned), on the executor, into the run
folder ``verify-CKPT-TAG`` (TAG: a digest of the checkpoint's content), claimed like any run (:mod:`.rundir`). The radius is the checkpoint's own
unless the config or ``--eps`` gives one (:func:`verify_eps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from abcrown_plugins.abcrown.abcrown_env import require_abcrown
from abcrown_plugins.abcrown.verify import AbcrownSummary, abcrown_verify
from abcrown_plugins.checkpoints import ModelMeta
from abcrown_plugins.config import Config
from abcrown_plugins.executor import ExecutorSettings
from abcrown_plugins.experiments.pruning import bound_method
from abcrown_plugins.experiments.rundir import checkpoint_identity, claim_run_dir, run_dir
from abcrown_plugins.models import load_model
from abcrown_plugins.runtime import select_device, set_threads
from abcrown_plugins.transfer.scenario import dataset_for_checkpoint
from abcrown_plugins.verification import evaluate
from abcrown_plugins.verification.evaluate import EvalResult

__all__ = ["VerifyResult", "run_verify", "verify_eps"]


@dataclass(frozen=True)
class VerifyResult:
    """The built-in bounds' result, the checkpoint's metadata, and α,β-CROWN's summary and folder (or None)."""

    result: EvalResult
    meta: ModelMeta
    abcrown: AbcrownSummary | None = None
    out: Path | None = None


def verify_eps(cfg: Config, meta: ModelMeta) -> float:
    """The radius to verify at: ``verification.eps`` if the YAML or the command line set it, else the
    checkpoint's own (``meta.eps``, the radius its run verified), else the schema's default."""
    if cfg.is_given("verification.eps") or meta.eps is None:
        return cfg.verification.eps
    return meta.eps


def run_verify(cfg: Config, checkpoint: str | Path, out: str | Path | None = None) -> VerifyResult:
    """Evaluate ``checkpoint`` at :func:`verify_eps` with ``verification.method`` (module docstring).

    The result's ``eps`` (``result.result.eps``) is the radius used.
    """
    if cfg.verification.method == "abcrown":
        require_abcrown()
    set_threads(cfg.general.num_threads)
    device = select_device(cfg.general.device)
    loaded = load_model(checkpoint, device=device)
    eps = verify_eps(cfg, loaded.meta)
    if eps != cfg.verification.eps:
        cfg = cfg.replace(verification={"eps": eps})
    v = cfg.verification
    test_set = dataset_for_checkpoint(loaded.meta, "test", cfg.data.root, cfg.data.num_test, seed=cfg.general.seed)
    result = evaluate(loaded.model, test_set, v.eps, bound_method(v.method), v.batch_size, v.num_examples, device)
    if v.method != "abcrown":
        return VerifyResult(result, loaded.meta)
    identity = {"checkpoint": checkpoint_identity(loaded.path)}
    folder = run_dir(cfg, out, name=f"verify-{Path(checkpoint).stem}-{identity['checkpoint'][7:13]}")
    with claim_run_dir(folder, cfg, "verify", identity):
        net = load_model(loaded.checkpoint, compact=True).model
        _, summary = abcrown_verify(net, test_set, v.eps, v.num_examples, v.timeout, folder / "abcrown",
                                    v.abcrown_config, ExecutorSettings.from_config(cfg), ibp_model=loaded.model)
    return VerifyResult(result, loaded.meta, summary, folder)
