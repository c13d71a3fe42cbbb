"""The main job: train, then prune and retrain in rounds, verifying after each round.

Round 0 trains the dense network; round r > 0 prunes the previous round's
trained network (``pruning.rate`` of the remaining weights, global magnitude),
rewinds the kept weights to their initial values (``pruning.rewind: init``)
and trains again. After each round the network is evaluated (clean accuracy,
IBP-verified accuracy, stability) and a checkpoint with its metrics and mask
is written. A run that is killed resumes: finished rounds are read back from
their checkpoints and an unfinished round continues after its last epoch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any



from abcrown_plugins import checkpoints
from abcrown_plugins.config import Config, dump_config
from abcrown_plugins.data import load_dataset
from abcrown_plugins.errors import UserError
from abcrown_plugins.models import model_for, model_meta
from abcrown_plugins.pipeline.summary import write_summary
from abcrown_plugins.pruning import Mask, prune_global_magnitude, rewind_
from abcrown_plugins.runtime import seed_everything, select_device, set_threads
from abcrown_plugins.training import TrainSettings, ibp_init, train
from abcrown_plugins.verification import evaluate


def output_dir_for(cfg: Config) -> Path:
    """``output.dir`` or ``results/NAME-HASH`` (hash of the non-default settings)."""
    return Path(cfg.output.dir) if cfg.output.dir else Path("results") / f"{cfg.general.name}-{cfg.hash()}"


def _claim_output_dir(cfg: Config, out: Path) -> None:
    """Create ``out`` for this config, or accept it if it holds a run of the same config."""
    marker = out / "run.json"
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous.get("config_hash") != cfg.hash():
            raise UserError(f"output folder '{out}' holds a run of a different config (hash "
                            f"{previous.get('config_hash')} vs {cfg.hash()}); pass another --output or delete it")
        return
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder '{out}' is not empty and holds no abcrown-plugins run; pass another --output")
    out.mkdir(parents=True, exist_ok=True)
    checkpoints.atomic_write_text(out / "config.yaml", dump_config(cfg))
    checkpoints.atomic_write_text(marker, json.dumps({"config_hash": cfg.hash(), "name": cfg.general.name}) + "\n")


def run_pipeline(cfg: Config, out: Path | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Run (or resume) the train-prune-verify rounds of ``cfg``; returns the folder and one row per round."""
    out = Path(out) if out is not None else output_dir_for(cfg)
    set_threads(cfg.general.num_threads)
    device = select_device(cfg.general.device)
    seed_everything(cfg.general.seed)

    # everything that can fail on bad input fails before the output folder is touched
    d = cfg.data
    train_set = load_dataset(d.dataset, "train", d.root, d.num_train, seed=cfg.general.seed)
    test_set = load_dataset(d.dataset, "test", d.root, d.num_test, seed=cfg.general.seed)
    info = train_set.info
    model = model_for(cfg.model.arch, info)
    start_payload = checkpoints.load_model_checkpoint(cfg.model.checkpoint) if cfg.model.checkpoint else None
    _claim_output_dir(cfg, out)

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
        elif cfg.training.method == "ibp" and cfg.training.ibp_init:
            ibp_init(model)
        checkpoints.save(init_path, {"state_dict": model.state_dict()})
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(device)

    settings = TrainSettings.from_config(cfg)
    meta = model_meta(cfg.model.arch, info)
    mask = Mask.ones_like(model, cfg.pruning.scope)
    rows: list[dict[str, Any]] = []
    for r in range(cfg.pruning.rounds + 1):
        round_dir = out / f"round_{r}"
        ckpt_path = round_dir / "checkpoint.pt"
        if ckpt_path.is_file():
            payload = checkpoints.load_model_checkpoint(ckpt_path)
            model.load_state_dict(payload["state_dict"])
            mask = Mask(payload["masks"])
            rows.append(payload["meta"]["metrics"])
            continue
        start = time.perf_counter()
        if r > 0:
            mask = prune_global_magnitude(model, mask, cfg.pruning.rate)
            if cfg.pruning.rewind == "init":
                rewind_(model, init_state, mask)
        mask.apply_(model)
        history = train(model, train_set, settings, device, state_path=round_dir / "train_state.pt",
                        run_key=f"{cfg.hash()}/round{r}", mask=mask, desc=f"round {r}")
        train_time = time.perf_counter() - start
        v = cfg.verification
        result = evaluate(model, test_set, v.eps, v.method, v.batch_size, v.num_examples, device,
                          desc=f"round {r} verify")
        row = {"round": r, "remain_ratio": mask.density(), "remaining_weights": mask.kept,
               "std_acc": result.std_acc, "verified_acc": result.verified_acc, "eps": v.eps,
               "verifier": v.method, "instability": result.instability, "unstable_ratio": result.unstable_ratio,
               "instability_bn": result.instability_bn, "unstable_ratio_bn": result.unstable_ratio_bn,
               "train_acc": history[-1]["train_acc"] if history else None,
               "train_time_s": train_time, "verify_time_s": result.time_s,
               "time_s": train_time + result.time_s, "n_test": result.n}
        checkpoints.save_model_checkpoint(
            ckpt_path, model.state_dict(),
            {**meta, "eps": v.eps, "train_eps": cfg.training.eps, "training_method": cfg.training.method,
             "config_hash": cfg.hash(), "config": cfg.to_dict(), "round": r, "metrics": row,
             "history": history},
            masks=mask.to_dict())
        (round_dir / "train_state.pt").unlink(missing_ok=True)
        rows.append(row)
        write_summary(cfg, out, rows)
    write_summary(cfg, out, rows)
    if not cfg.output.keep_checkpoints:
        for r in range(cfg.pruning.rounds):
            (out / f"round_{r}" / "checkpoint.pt").unlink(missing_ok=True)
    return out, rows


def last_checkpoint(out: Path, cfg: Config) -> Path:
    return out / f"round_{cfg.pruning.rounds}" / "checkpoint.pt"


