"""The main job: train, then prune and retrain in rounds, verifying after each round.

Round 0 trains the dense network; round r > 0 prunes the previous round's trained
network with ``pruning.method`` (:func:`abcrown_plugins.pruning.prune`: ``pruning.rate``
of the remaining weights, or ``pruning.channel_rate`` of the remaining channels), then
rewinds the kept weights (``pruning.rewind``: to their initial values, to the dense
network after ``pruning.rewind_epoch`` epochs, or not at all: finetune mode) and trains
again with the method's regulariser. After each round the network is evaluated: clean
accuracy, PGD accuracy (re-checked counterexamples), verified accuracy (IBP, plus CROWN
when ``verification.method`` is crown), time and peak memory of verification, and
instability pre-activation and pre-BN; a checkpoint with the metrics and mask is
written. A run that is killed resumes: finished rounds are read back from their
checkpoints and an unfinished round continues after its last epoch with the same
numbers (every random choice is seeded from the config and the round).

When all rounds are done, the best subnetwork (highest verified accuracy, then clean
accuracy, then fewest weights) is written to ``best.json`` and every round that matches
or beats the dense network on both clean and verified accuracy is flagged as a
certified lottery ticket.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from abcrown_plugins import checkpoints
from abcrown_plugins.attacks import pgd_accuracy
from abcrown_plugins.bounds import lirpa_available
from abcrown_plugins.bounds.lirpa import INSTALL_HINT
from abcrown_plugins.config import Config, dump_config
from abcrown_plugins.data import load_dataset
from abcrown_plugins.errors import UserError
from abcrown_plugins.models import model_for, model_meta
from abcrown_plugins.pipeline.summary import best_round, mark_lottery_tickets, write_summary
from abcrown_plugins.pruning import Mask, PruneContext, get_method, initial_mask, prune, rewind_
from abcrown_plugins.pruning.methods import channel_mask_of
from abcrown_plugins.regularizers import make_regularizer
from abcrown_plugins.runtime import claim_run_dir, seed_everything, select_device, set_threads
from abcrown_plugins.training import TrainSettings, ibp_init, make_objective, train
from abcrown_plugins.verification import evaluate


def output_dir_for(cfg: Config) -> Path:
    """``output.dir`` or ``results/NAME-HASH`` (hash of the non-default settings)."""
    return Path(cfg.output.dir) if cfg.output.dir else Path("results") / f"{cfg.general.name}-{cfg.hash()}"


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
    return regs


def pruning_objective(settings: TrainSettings, num_classes: int):
    """``(model, x, y) -> loss``: the training objective at the full radius (CROWN-IBP is IBP there)."""
    if settings.method == "crown-ibp":
        settings = dataclasses.replace(settings, method="ibp")
    objective = make_objective(settings, num_classes)
    return lambda model, x, y: objective(model, x, y, settings.eps).loss


def _check_before_start(cfg: Config) -> None:
    """Fail on settings that cannot work, before anything is written."""
    get_method(cfg.pruning.method)
    if cfg.training.method == "crown-ibp" and not lirpa_available():
        raise UserError(f"training.method crown-ibp needs auto_LiRPA: {INSTALL_HINT}")
    if cfg.verification.method == "crown" and not lirpa_available():
        raise UserError(f"verification.method crown needs auto_LiRPA: {INSTALL_HINT}")
    if cfg.pruning.rewind == "early" and cfg.pruning.rewind_epoch > cfg.training.epochs:
        raise UserError(f"pruning.rewind_epoch {cfg.pruning.rewind_epoch} is after the last epoch of the dense "
                        f"round (training.epochs {cfg.training.epochs}); choose 0..{cfg.training.epochs}")


def run_pipeline(cfg: Config, out: Path | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Run (or resume) the train-prune-verify rounds of ``cfg``; returns the folder and one row per round."""
    out = Path(out) if out is not None else output_dir_for(cfg)
    set_threads(cfg.general.num_threads)
    device = select_device(cfg.general.device)
    seed_everything(cfg.general.seed)

    # everything that can fail on bad input fails before the output folder is touched
    _check_before_start(cfg)
    method = get_method(cfg.pruning.method)
    d = cfg.data
    train_set = load_dataset(d.dataset, "train", d.root, d.num_train, seed=cfg.general.seed)
    test_set = load_dataset(d.dataset, "test", d.root, d.num_test, seed=cfg.general.seed)
    info = train_set.info
    model = model_for(cfg.model.arch, info)
    start_payload = checkpoints.load_model_checkpoint(cfg.model.checkpoint) if cfg.model.checkpoint else None
    mask = initial_mask(method, model, cfg.pruning.scope)
    claim_run_dir(out, cfg.hash(), dump_config(cfg), cfg.general.name, "pruning")

    init_path = out / "init.pt"
    if init_path.is_file():
        model.load_state_dict(checkpoints.load(init_path)["state_dict"])
    else:
        if start_payload is not None:
            try:
                model.load_state_dict(start_payload["state_dict"])
            except RuntimeError as e:
                raise UserError(f"model.checkpoint '{cfg.model.checkpoint}' does not fit model "
                                f"'{cfg.model.arch}': {str(e).splitlines()[0]}") from None
        elif cfg.training.method in ("ibp", "crown-ibp") and cfg.training.ibp_init:
            ibp_init(model)
        checkpoints.save(init_path, {"state_dict": model.state_dict()})
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(device)

    settings = TrainSettings.from_config(cfg)
    regs = regularizers_for(cfg, method)
    meta = model_meta(cfg.model.arch, info)
    p, v = cfg.pruning, cfg.verification
    rewind_path = out / "rewind.pt"
    rows: list[dict[str, Any]] = []
    for r in range(p.rounds + 1):
        round_dir = out / f"round_{r}"
        ckpt_path = round_dir / "checkpoint.pt"
        if ckpt_path.is_file():
            payload = checkpoints.load_model_checkpoint(ckpt_path)
            model.load_state_dict(payload["state_dict"])
            mask = Mask(payload["masks"])
            rows.append(payload["meta"]["metrics"])
            continue
        start = time.perf_counter()
        round_settings = settings
        if r > 0:
            ctx = PruneContext(rate=p.rate, channel_rate=p.channel_rate, strategy=p.strategy, round=r,
                               seed=cfg.general.seed, train_set=train_set, batch_size=d.batch_size,
                               objective=pruning_objective(settings, info.num_classes), init_state=init_state,
                               saliency_batches=p.saliency_batches,
                               score_epochs=p.score_epochs if p.score_epochs is not None else settings.epochs,
                               score_lr=p.score_lr, device=device)
            mask = prune(method, model, mask, ctx)
            if p.rewind == "init":
                rewind_(model, init_state, mask)
            elif p.rewind == "early":
                state = init_state if p.rewind_epoch == 0 else checkpoints.load(rewind_path)["state_dict"]
                rewind_(model, state, mask)
            elif p.finetune_epochs is not None:
                round_settings = dataclasses.replace(settings, epochs=p.finetune_epochs)
        mask.apply_(model)
        on_epoch_end = None
        if r == 0 and p.rewind == "early" and p.rewind_epoch > 0:
            def on_epoch_end(epoch, m, _path=rewind_path, _at=p.rewind_epoch):
                if epoch == _at:
                    checkpoints.save(_path, {"epoch": epoch, "state_dict": m.state_dict()})
        history = train(model, train_set, round_settings, device, state_path=round_dir / "train_state.pt",
                        run_key=f"{cfg.hash()}/round{r}", mask=mask, desc=f"round {r}", regularizers=regs,
                        on_epoch_end=on_epoch_end)
        train_time = time.perf_counter() - start
        result = evaluate(model, test_set, v.eps, v.method, v.batch_size, v.num_examples, device,
                          desc=f"round {r} verify")
        pgd = None
        if v.pgd_steps > 0:
            pgd = pgd_accuracy(model, test_set, v.eps, v.pgd_steps, v.pgd_alpha * v.eps, v.pgd_restarts,
                               v.batch_size, v.num_examples, device, seed=cfg.general.seed * 1000003 + r,
                               desc=f"round {r} pgd")
        row = _row(r, method, model, mask, result, pgd, history, train_time, v)
        checkpoints.save_model_checkpoint(
            ckpt_path, model.state_dict(),
            {**meta, "eps": v.eps, "train_eps": cfg.training.eps, "training_method": cfg.training.method,
             "pruning_method": method.name, "config_hash": cfg.hash(), "config": cfg.to_dict(), "round": r,
             "metrics": row, "history": history},
            masks=mask.to_dict(),
            channel_masks=channel_mask_of(model, mask) if method.structure == "channels" else None)
        (round_dir / "train_state.pt").unlink(missing_ok=True)
        rows.append(row)
        write_summary(cfg, out, rows)
    rows = mark_lottery_tickets(rows)
    write_summary(cfg, out, rows)
    best = best_round(rows)
    if best is not None:
        checkpoints.atomic_write_text(out / "best.json", json.dumps(
            {"round": best["round"], "checkpoint": str(out / f"round_{best['round']}" / "checkpoint.pt"),
             "rule": "highest verified_acc, then std_acc, then lowest remain_ratio",
             "lottery_tickets": [row["round"] for row in rows if row.get("lottery_ticket")],
             "metrics": best}, indent=1) + "\n")
    if not cfg.output.keep_checkpoints:
        for r in range(p.rounds + 1):
            if best is None or r != best["round"]:
                if r != p.rounds:
                    (out / f"round_{r}" / "checkpoint.pt").unlink(missing_ok=True)
    return out, rows


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
            "verifier": v.method, "instability": result.instability, "unstable_ratio": result.unstable_ratio,
            "instability_bn": result.instability_bn, "unstable_ratio_bn": result.unstable_ratio_bn,
            "train_acc": history[-1]["train_acc"] if history else None,
            "train_time_s": train_time, "verify_time_s": result.time_s,
            "verify_peak_mem_mib": result.peak_mem_mib, "verify_mem_how": result.peak_mem_how,
            "pgd_time_s": pgd.time_s if pgd is not None else None,
            "time_s": train_time + result.time_s, "n_test": result.n}


def last_checkpoint(out: Path, cfg: Config) -> Path:
    return out / f"round_{cfg.pruning.rounds}" / "checkpoint.pt"
