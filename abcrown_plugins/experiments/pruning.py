"""The main job: train, then prune and retrain in rounds, verifying after each round.

Round 0 trains the dense network; round r > 0 prunes the previous round's trained
network with ``pruning.method`` (:func:`abcrown_plugins.pruning.prune`: ``pruning.rate``
of the remaining weights, or ``pruning.channel_rate`` of the remaining channels), then
rewinds the kept weights (``pruning.rewind``: to their initial values, to the dense
network after ``pruning.rewind_epoch`` epochs, or not at all: finetune mode) and trains
again with the method's regulariser. After each round the network is evaluated: clean
accuracy, PGD accuracy (re-checked counterexamples), verified accuracy (IBP, plus CROWN
when ``verification.method`` is crown, plus α,β-CROWN's complete verification when it is
abcrown), time and peak memory of verification, and
instability pre-activation and pre-BN; a checkpoint with the metrics and mask is
written. A run that is killed resumes: finished rounds are read back from their
checkpoints and an unfinished round continues after its last epoch with the same
numbers (every random choice is seeded from the config and the round, the pruning
step's included). The run folder records the run's identity (its settings and the
content hash of ``model.checkpoint``); a resume with anything different is refused
(:func:`~abcrown_plugins.experiments.rundir.claim_run_dir`), and so is a run whose
``model.checkpoint`` does not fit the model, before the folder is claimed.

The rounds follow the steps of a lottery-ticket runner, each a function here:
:func:`initial_weights`, :func:`prune_level`, :func:`rewind`, :func:`train_level`,
:func:`evaluate_level`, :func:`save_level`; :func:`run_pruning` only chains them.

When all rounds are done, the best subnetwork (highest verified accuracy, then clean
accuracy, then fewest weights) is written to ``best.json`` and every round that matches
or beats the dense network on both clean and verified accuracy is flagged as a
certified lottery ticket.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from abcrown_plugins import checkpoints
from abcrown_plugins.abcrown.abcrown_env import require_abcrown
from abcrown_plugins.abcrown.verify import abcrown_verify
from abcrown_plugins.attacks import pgd_accuracy
from abcrown_plugins.bounds import lirpa_available
from abcrown_plugins.bounds.lirpa import INSTALL_HINT
from abcrown_plugins.checkpoints import ModelMeta
from abcrown_plugins.config import Config
from abcrown_plugins.data import load_dataset, run_info
from abcrown_plugins.errors import UserError
from abcrown_plugins.executor import ExecutorSettings, ray_available
from abcrown_plugins.executor.distributed import INSTALL_HINT as RAY_HINT
from abcrown_plugins.experiments.pruning_summary import best_round, mark_lottery_tickets, write_summary
from abcrown_plugins.experiments.rundir import checkpoint_identity, claim_run_dir, run_dir
from abcrown_plugins.fileio import atomic_write_text
from abcrown_plugins.models import StartModel, start_model
from abcrown_plugins.pruning import Mask, PruneContext, get_method, initial_mask, prune, rewind_
from abcrown_plugins.pruning.compaction import compact
from abcrown_plugins.pruning.methods import PruningMethod, channel_mask_of
from abcrown_plugins.regularizers import make_regularizer
from abcrown_plugins.runtime import seed_everything, select_device, set_threads
from abcrown_plugins.training import TrainSettings, ibp_init, make_objective, train
from abcrown_plugins.verification import evaluate

__all__ = ["PruningRun", "evaluate_level", "initial_weights", "last_checkpoint", "load_start", "prune_level",
           "regularizers_for", "rewind", "run_pruning", "save_level", "train_level"]


def regularizers_for(cfg: Config, method) -> list:
    """The loss terms and penalties a round trains with: the method's, unless regularizer.stability says."""
    regs = []
    stability = cfg.regularizer.stability
    if stability == "auto":
        stability = method.regularizer if method.regularizer in ("rs", "nrs") else "none"
    if stability != "none":
        regs.append(make_regularizer(stability, cfg.regularizer.stability_weight))
    if method.regularizer == "bn_l1":
        regs.append(make_regularizer("bn_l1", cfg.regularizer.slim_l1))
    if cfg.regularizer.warmup > 0:
        regs.append(make_regularizer("warmup", cfg.regularizer.warmup, eps=cfg.training.eps, tol=cfg.regularizer.warmup_tol))
    return regs


def pruning_objective(settings: TrainSettings, num_classes: int):
    """``(model, x, y) -> loss``: the training objective at the full radius (CROWN-IBP is IBP there)."""
    if settings.method == "crown-ibp":
        settings = dataclasses.replace(settings, method="ibp")
    objective = make_objective(settings, num_classes)
    return lambda model, x, y: objective(model, x, y, settings.eps).loss


def _check_environment(cfg: Config) -> None:
    """Fail on settings this installation cannot run, before anything is written (key rules: config schema)."""
    if cfg.verification.method == "abcrown":
        require_abcrown()
        if cfg.verification.abcrown_config and not Path(cfg.verification.abcrown_config).is_file():
            raise UserError(f"verification.abcrown_config '{cfg.verification.abcrown_config}' not found")
    if cfg.executor.kind == "ray" and not ray_available():
        raise UserError(RAY_HINT)
    if cfg.training.method == "crown-ibp" and not lirpa_available():
        raise UserError(f"training.method crown-ibp needs auto_LiRPA: {INSTALL_HINT}")
    if cfg.verification.method == "crown" and not lirpa_available():
        raise UserError(f"verification.method crown needs auto_LiRPA: {INSTALL_HINT}")


@dataclass
class PruningRun:
    """Everything the steps of one run share: config, folder, device, data, method and settings."""

    cfg: Config
    out: Path
    device: torch.device
    method: PruningMethod
    train_set: Any
    test_set: Any
    settings: TrainSettings
    regularizers: list
    meta: ModelMeta
    pretrained: bool = False  # the network came with its user's weights (imported): never re-initialised

    @property
    def rewind_path(self) -> Path:
        return self.out / "rewind.pt"

    def round_dir(self, r: int) -> Path:
        return self.out / f"round_{r}"

    def checkpoint_path(self, r: int) -> Path:
        return self.round_dir(r) / "checkpoint.pt"


def initial_weights(run: PruningRun, model: nn.Module,
                    start: checkpoints.ModelCheckpoint | None = None) -> dict[str, torch.Tensor]:
    """Give ``model`` the run's initial weights and return a copy of them (the rewind point).

    ``init.pt`` of the run folder when it exists (a resumed run); else the weights of
    ``start`` (``model.checkpoint``, read), the imported network's own, or IBP initialisation for IBP/CROWN-IBP
    training, or the fresh initialisation;
    written to ``init.pt`` before training starts.
    """
    cfg = run.cfg
    init_path = run.out / "init.pt"
    if init_path.is_file():
        model.load_state_dict(checkpoints.load(init_path)["state_dict"])
    else:
        if start is not None:
            load_start(cfg, model, start)
        elif cfg.training.method in ("ibp", "crown-ibp") and cfg.training.ibp_init and not run.pretrained:
            ibp_init(model)
        checkpoints.save(init_path, {"state_dict": model.state_dict()})
    return {k: v.clone() for k, v in model.state_dict().items()}


def load_start(cfg: Config, model: nn.Module, start: checkpoints.ModelCheckpoint) -> None:
    """Load ``model.checkpoint`` (read) into ``model``; a checkpoint of another shape is one line."""
    try:
        model.load_state_dict(start.state_dict)
    except RuntimeError as e:
        raise UserError(f"model.checkpoint '{cfg.model.checkpoint}' does not fit model "
                        f"'{cfg.model.arch}': {str(e).splitlines()[0][:200]}") from None


def prune_level(run: PruningRun, model: nn.Module, mask: Mask, r: int, init_state) -> Mask:
    """Round ``r``'s mask: ``pruning.method`` applied to the previous round's trained network."""
    cfg, p = run.cfg, run.cfg.pruning
    ctx = PruneContext(rate=p.rate, channel_rate=p.channel_rate, strategy=p.strategy, round=r,
                       seed=cfg.general.seed, train_set=run.train_set, batch_size=cfg.data.batch_size,
                       objective=pruning_objective(run.settings, run.train_set.info.num_classes),
                       init_state=init_state, saliency_batches=p.saliency_batches,
                       score_epochs=p.score_epochs if p.score_epochs is not None else run.settings.epochs,
                       score_lr=p.score_lr, device=run.device)
    return prune(run.method, model, mask, ctx)


def rewind(run: PruningRun, model: nn.Module, mask: Mask, init_state) -> TrainSettings:
    """Rewind the kept weights as ``pruning.rewind`` says; returns the settings of the round's training."""
    p = run.cfg.pruning
    if p.rewind == "init":
        rewind_(model, init_state, mask)
    elif p.rewind == "early":
        state = init_state if p.rewind_epoch == 0 else checkpoints.load(run.rewind_path)["state_dict"]
        rewind_(model, state, mask)
    elif p.finetune_epochs is not None:
        return dataclasses.replace(run.settings, epochs=p.finetune_epochs)
    return run.settings


def train_level(run: PruningRun, model: nn.Module, mask: Mask, r: int,
                settings: TrainSettings) -> list[dict[str, Any]]:
    """Train round ``r`` (resumable per epoch); the dense round saves the early-rewind point."""
    p = run.cfg.pruning
    mask.apply_(model)
    on_epoch_end = None
    if r == 0 and p.rewind == "early" and p.rewind_epoch > 0:
        def on_epoch_end(epoch, m, _path=run.rewind_path, _at=p.rewind_epoch):
            if epoch == _at:
                checkpoints.save(_path, {"epoch": epoch, "state_dict": m.state_dict()})
    return train(model, run.train_set, settings, run.device, state_path=run.round_dir(r) / "train_state.pt",
                 run_key=f"{run.cfg.hash()}/round{r}", mask=mask, desc=f"round {r}", regularizers=run.regularizers,
                 on_epoch_end=on_epoch_end)


def bound_method(method: str) -> str:
    """The built-in bound method of ``verification.method`` (α,β-CROWN runs beside IBP)."""
    return "ibp" if method == "abcrown" else method


def evaluate_level(run: PruningRun, model: nn.Module, mask: Mask, r: int):
    """Round ``r``'s verification, PGD (None when ``verification.pgd_steps`` is 0) and α,β-CROWN results.

    With ``verification.method abcrown`` α,β-CROWN verifies the round's network (compacted
    when channel-pruned) on the first ``verification.num_examples`` test images; its rows
    go to ``round_R/abcrown.csv`` and its summary (:class:`~abcrown_plugins.abcrown.verify.AbcrownSummary`)
    is returned third (None otherwise).
    """
    v, seed = run.cfg.verification, run.cfg.general.seed
    result = evaluate(model, run.test_set, v.eps, bound_method(v.method), v.batch_size, v.num_examples, run.device,
                      desc=f"round {r} verify")
    pgd = None
    if v.pgd_steps > 0:
        pgd = pgd_accuracy(model, run.test_set, v.eps, v.pgd_steps, v.pgd_alpha * v.eps, v.pgd_restarts,
                           v.batch_size or result.batch_size, v.num_examples, run.device, seed=seed * 1000003 + r,
                           desc=f"round {r} pgd")
    complete = None
    if v.method == "abcrown":
        net = copy.deepcopy(model).cpu().eval()
        if run.method.structure == "channels":
            net = compact(net, channel_mask_of(net, mask)).eval()
        _, complete = abcrown_verify(net, run.test_set, v.eps, v.num_examples, v.timeout, run.round_dir(r) / "abcrown",
                                     v.abcrown_config, ExecutorSettings.from_config(run.cfg), ibp_model=model,
                                     desc=f"round {r} α,β-CROWN")
    return result, pgd, complete


def save_level(run: PruningRun, model: nn.Module, mask: Mask, r: int, row: dict[str, Any],
               history: list[dict[str, Any]]) -> None:
    """Write round ``r``'s checkpoint (weights, metrics, masks) and drop its training state."""
    cfg = run.cfg
    meta = run.meta.replace(eps=cfg.verification.eps, config_hash=cfg.hash(), round=r, metrics=row,
                            train_eps=cfg.training.eps, training_method=cfg.training.method,
                            pruning_method=run.method.name, config=cfg.to_dict(), history=history)
    checkpoints.save_model_checkpoint(
        run.checkpoint_path(r), model.state_dict(), meta, masks=mask.to_dict(),
        channel_masks=channel_mask_of(model, mask) if run.method.structure == "channels" else None)
    (run.round_dir(r) / "train_state.pt").unlink(missing_ok=True)


def run_pruning(cfg: Config, out: Path | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Run (or resume) the train-prune-verify rounds of ``cfg``; returns the folder and one row per round."""
    out = run_dir(cfg, out)
    set_threads(cfg.general.num_threads)
    device = select_device(cfg.general.device)
    seed_everything(cfg.general.seed)

    # everything that can fail on bad input fails before the output folder is touched
    _check_environment(cfg)
    method = get_method(cfg.pruning.method)
    d = cfg.data
    info = run_info(cfg)  # the data set's, with data.mean / data.std
    test_set = load_dataset(d.dataset, "test", d.root, d.num_test, seed=cfg.general.seed).with_info(info)
    if _needs_training_data(cfg, method):
        train_set = load_dataset(d.dataset, "train", d.root, d.num_train, seed=cfg.general.seed).with_info(info)
    else:  # one-shot pruning of a given network by a data-free criterion: no training split needed
        train_set = test_set.select(torch.zeros(0, dtype=torch.long))
    net = start_model(cfg.model.arch, cfg.model.checkpoint, train_set.info)
    model, start = net.model, net.start
    identity = dict(net.identity)  # the weights' content, not their path
    if start is not None:
        load_start(cfg, model, start)
    if cfg.model.checkpoint:
        identity["model.checkpoint"] = checkpoint_identity(cfg.model.checkpoint)
    mask = initial_mask(method, model, cfg.pruning.scope)
    with claim_run_dir(out, cfg, "pruning", identity):
        return _run_rounds(cfg, out, device, method, train_set, test_set, net, mask)


#: Criteria that score weights with training data (gradients or learned scores).
_DATA_CRITERIA = ("snip", "taylor", "hydra")


def _needs_training_data(cfg: Config, method: PruningMethod) -> bool:
    """Whether any epoch trains, or the pruning criterion reads training data."""
    p = cfg.pruning
    finetune = p.finetune_epochs if (p.rewind == "none" and p.finetune_epochs is not None) else cfg.training.epochs
    pruned = p.rounds > 0
    return cfg.training.epochs > 0 or (pruned and (finetune > 0 or method.criterion in _DATA_CRITERIA))


def _run_rounds(cfg: Config, out: Path, device: torch.device, method: PruningMethod, train_set, test_set,
                net: StartModel, mask: Mask) -> tuple[Path, list[dict[str, Any]]]:
    """The rounds of :func:`run_pruning`, in the claimed folder ``out``."""
    run = PruningRun(cfg=cfg, out=out, device=device, method=method, train_set=train_set, test_set=test_set,
                     settings=TrainSettings.from_config(cfg), regularizers=regularizers_for(cfg, method),
                     meta=net.meta, pretrained=net.pretrained)
    model = net.model
    init_state = initial_weights(run, model, net.start)
    model.to(device)
    rows: list[dict[str, Any]] = []
    for r in range(cfg.pruning.rounds + 1):
        if run.checkpoint_path(r).is_file():  # a finished round of a resumed run
            done = checkpoints.read_model_checkpoint(run.checkpoint_path(r))
            model.load_state_dict(done.state_dict)
            mask = Mask(done.masks)
            rows.append(done.meta.metrics)
            continue
        start = time.perf_counter()
        settings = run.settings
        if r > 0:
            mask = prune_level(run, model, mask, r, init_state)
            settings = rewind(run, model, mask, init_state)
        history = train_level(run, model, mask, r, settings)
        train_time = time.perf_counter() - start
        result, pgd, complete = evaluate_level(run, model, mask, r)
        row = _row(r, method, model, mask, result, pgd, history, train_time, cfg.verification)
        if complete is not None:
            row.update(complete.columns())
        save_level(run, model, mask, r, row, history)
        rows.append(row)
        write_summary(cfg, out, rows)
    rows = mark_lottery_tickets(rows)
    write_summary(cfg, out, rows)
    _finish(run, rows)
    return out, rows


def _finish(run: PruningRun, rows: list[dict[str, Any]]) -> None:
    """``best.json`` (best round, lottery tickets); drop the checkpoints ``output.keep_checkpoints`` does not keep."""
    best = best_round(rows)
    last = run.cfg.pruning.rounds
    if best is not None:
        atomic_write_text(run.out / "best.json", json.dumps(
            {"round": best["round"], "checkpoint": str(run.checkpoint_path(best["round"])),
             "rule": "highest verified_acc, then std_acc, then lowest remain_ratio",
             "lottery_tickets": [row["round"] for row in rows if row.get("lottery_ticket")],
             "metrics": best}, indent=1) + "\n")
    if not run.cfg.output.keep_checkpoints:
        for r in range(last + 1):
            if (best is None or r != best["round"]) and r != last:
                run.checkpoint_path(r).unlink(missing_ok=True)


def _row(r, method, model, mask, result, pgd, history, train_time, v) -> dict[str, Any]:
    weight_keys = [k for k in mask if k.endswith(".weight") and mask[k].dim() > 1]
    kept = sum(int(mask[k].sum()) for k in weight_keys)
    total = sum(mask[k].numel() for k in weight_keys)
    weight_ratio = kept / max(total, 1)
    channel_ratio = None
    try:
        cm = channel_mask_of(model, mask)
        if cm:
            channel_ratio = sum(int(c.sum()) for c in cm.values()) / sum(c.numel() for c in cm.values())
    except Exception:  # noqa: BLE001 - a model the channel walk does not know has no channel ratio
        channel_ratio = None
    remain = channel_ratio if method.structure == "channels" else weight_ratio
    return {"round": r, "method": method.name, "structure": method.structure, "remain_ratio": remain,
            "weight_remain_ratio": weight_ratio, "channel_remain_ratio": channel_ratio,
            "remaining_weights": kept,
            "std_acc": result.std_acc, "pgd_acc": pgd.pgd_acc if pgd is not None else None,
            "verified_acc": result.verified_acc, "verified_acc_ibp": result.verified_acc_ibp, "eps": v.eps,
            "verifier": bound_method(v.method), "instability": result.instability, "unstable_ratio": result.unstable_ratio,
            "instability_bn": result.instability_bn, "unstable_ratio_bn": result.unstable_ratio_bn,
            "train_acc": history[-1]["train_acc"] if history else None,
            "train_time_s": train_time, "verify_time_s": result.time_s,
            "verify_peak_mem_mib": result.peak_mem_mib, "verify_mem_how": result.peak_mem_how,
            "verify_batch_size": result.batch_size,
            "pgd_time_s": pgd.time_s if pgd is not None else None,
            "time_s": train_time + result.time_s, "n_test": result.n}


def last_checkpoint(out: Path, cfg: Config) -> Path:
    return out / f"round_{cfg.pruning.rounds}" / "checkpoint.pt"
