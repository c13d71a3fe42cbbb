"""``abcrown-plugins transfer``: pretrain on synthetic attributes, fine-tune sparse deltas, certify each.

Layout of the output folder::

    config.yaml, run.json              the resolved config and its hash (resumption guard)
    pretrain/checkpoint.pt             the base network (one head per pretraining attribute)
    TASK/RUN/checkpoint.pt             one downstream network per task and run, RUN in
                                       direct, dense, PATTERN-kK (e.g. unstructured-k0.04)
    TASK/RUN/certify/...               randomized-smoothing certification (smoothing section)
    summary.csv, summary.md            one row per downstream network

A downstream checkpoint records, besides the folded weights and the usual
metadata, ``meta["transfer"]`` (``base_checkpoint``: the absolute path of the
base checkpoint, ``pattern``, ``k``, ``updated``, ``total``, ``classifier``,
``frozen_prefix``) and, in ``masks``, a bool tensor for *every* parameter:
True where the weight may differ from the base (the classifier is all True),
False where it equals the base bit for bit. :func:`load_pair` reads a
``(base, finetuned)`` pair back. Finished runs are skipped on restart; an
unfinished one resumes after its last epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from abcrown_plugins import checkpoints
from abcrown_plugins.config import Config, dump_config
from abcrown_plugins.data import load_dataset
from abcrown_plugins.errors import UserError
from abcrown_plugins.models import build, model_for, model_from_checkpoint, model_meta
from abcrown_plugins.report import markdown_table, write_csv, write_markdown
from abcrown_plugins.runtime import claim_run_dir, seed_everything, select_device, set_threads
from abcrown_plugins.transfer.finetune import FitSettings, SparseDelta, accuracy, fit, gradient_scores, reinit_classifier
from abcrown_plugins.transfer.masks import build_mask, classifier_names, layer_order, mask_count, unit_layout
from abcrown_plugins.transfer.scenario import (
    SCENARIO,
    attribute_task,
    check_attributes,
    head_accuracy,
    multi_head_loss,
    pretrain_set,
)

#: Prefix of a downstream task that is a whole data set (``dataset:svhn``) rather than a synthetic attribute.
DATASET_TASK = "dataset:"

__all__ = ["DATASET_TASK", "SUMMARY_COLUMNS", "load_pair", "prefix_mac_fraction", "run_transfer"]

SUMMARY_COLUMNS = ["task", "run", "pattern", "k", "updated_ratio", "frozen_prefix", "prefix_macs", "clean_acc",
                   "cert_acc", "cert_radius", "abstain", "train_s", "certify_s"]


@torch.no_grad()
def prefix_mac_fraction(model: nn.Module, masks: dict[str, torch.Tensor], input_shape: tuple[int, ...]) -> float:
    """Share of the multiply-accumulates of Conv2d/Linear layers that run before the first updated layer.

    Layers are taken in :func:`~abcrown_plugins.transfer.masks.layer_order`;
    a layer is updated when any entry of its (or its BatchNorm's) parameters is
    True in ``masks``. Their outputs equal the base network's bit for bit, so a
    differential verifier can reuse them.
    """
    macs: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, inp, out, name=name):
                if isinstance(mod, nn.Conv2d):
                    k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                else:
                    k = mod.in_features
                macs[name] = out[0].numel() * k
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    total = sum(macs.values())
    prefix = 0
    for name, m in layer_order(model):
        if any(bool(masks[f"{name}.{p}"].any()) for p, _ in m.named_parameters(recurse=False)):
            break
        prefix += macs.get(name, 0)
    return prefix / max(total, 1)


def _base_meta(cfg: Config, info, heads) -> dict[str, Any]:
    meta = model_meta(cfg.model.arch, info)
    meta["num_classes"] = sum(k for _, k in heads)
    meta["heads"] = [[a, k] for a, k in heads]
    meta["task"] = {"scenario": SCENARIO, "attributes": [a for a, _ in heads], "base_dataset": info.name}
    meta["data_seed"] = cfg.general.seed
    return meta


def _pretrain(cfg: Config, out: Path, train_base, test_base, device, warn) -> Path:
    path = out / "pretrain" / "checkpoint.pt"
    if path.is_file():
        return path
    t = cfg.transfer
    pre = pretrain_set(train_base, t.pretrain_attributes)
    info = train_base.info
    model = build(cfg.model.arch, info.channels, info.size, pre.num_outputs, info.mean, info.std)
    settings = FitSettings(t.pretrain_epochs, cfg.training.lr, cfg.data.batch_size, cfg.general.seed,
                           cfg.training.noise_sigma, cfg.training.grad_clip)

    def loss_fn(logits, targets):
        return multi_head_loss(logits, targets, pre.heads)

    t0 = time.perf_counter()
    fit(model, train_base, pre.targets, loss_fn, settings, device, out / "pretrain" / "state.pt",
        run_key=cfg.hash(), desc="pretrain")
    test = pretrain_set(test_base, t.pretrain_attributes)
    model.eval()
    correct = torch.zeros(len(pre.heads))
    with torch.no_grad():
        for start in range(0, len(test_base), 256):
            x = test_base.images[start:start + 256].to(device).float().div_(255.0)
            correct += head_accuracy(model(x), test.targets[start:start + 256].to(device), pre.heads).cpu()
    accs = {a: float(c) / len(test_base) for (a, _), c in zip(pre.heads, correct)}
    meta = _base_meta(cfg, info, pre.heads)
    meta["metrics"] = {"head_acc": accs, "train_s": time.perf_counter() - t0}
    meta["config_hash"] = cfg.hash()
    checkpoints.save_model_checkpoint(path, model.state_dict(), meta)
    (out / "pretrain" / "state.pt").unlink(missing_ok=True)
    return path


def _downstream_model(cfg: Config, base_payload, info, seed: int) -> nn.Module:
    """The base network with a fresh, re-initialised classifier of ``info.num_classes`` outputs."""
    model = model_for(cfg.model.arch, info)
    cls = set(classifier_names(model))
    state = {k: v for k, v in base_payload["state_dict"].items() if k not in cls}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != cls:
        raise UserError(f"base checkpoint does not fit model '{cfg.model.arch}' (missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]})")
    reinit_classifier(model, seed)
    return model


def _runs(cfg: Config) -> list[tuple[str, str | None, float]]:
    t = cfg.transfer
    runs = []
    if "direct" in t.baselines:
        runs.append(("direct", None, 1.0))
    if "dense" in t.baselines:
        runs.append(("dense", None, 1.0))
    for pattern in t.patterns:
        for k in t.ratios:
            runs.append((f"{pattern}-k{k:g}", pattern, float(k)))
    return runs


def run_transfer(cfg: Config, out: Path | None = None,
                 warn: Callable[[str], None] = lambda m: None) -> tuple[Path, list[dict[str, Any]]]:
    """Run (or resume) the whole transfer experiment of ``cfg``; returns the folder and the summary rows."""
    from abcrown_plugins.smoothing import warn_unreachable
    from abcrown_plugins.smoothing.run import SmoothingSettings, certify_dataset, write_report

    t = cfg.transfer
    check_attributes(t.pretrain_attributes, [x for x in t.tasks if not x.startswith(DATASET_TASK)])
    if any(x.startswith(DATASET_TASK) for x in t.tasks) and not cfg.model.checkpoint:
        raise UserError("a 'dataset:NAME' transfer task needs a pretrained base network: set model.checkpoint "
                        "(e.g. from `abcrown-plugins train` on the source data set)")
    if not t.tasks:
        raise UserError("transfer.tasks is empty; name at least one downstream attribute")
    if len(t.group_shape) != 2:
        raise UserError(f"transfer.group_shape must have two entries [out, in], got {list(t.group_shape)}")
    smoothing = SmoothingSettings.from_config(cfg) if t.certify else None
    out = Path(out) if out is not None else Path("results") / f"{cfg.general.name}-{cfg.hash()}"
    set_threads(cfg.general.num_threads)
    device = select_device(cfg.general.device)
    seed_everything(cfg.general.seed)
    d = cfg.data
    train_base = load_dataset(d.dataset, "train", d.root, d.num_train, seed=cfg.general.seed)
    test_base = load_dataset(d.dataset, "test", d.root, d.num_test, seed=cfg.general.seed)
    if smoothing is not None:
        msg = warn_unreachable([t.certify_radius], smoothing.n, smoothing.alpha, smoothing.sigma)
        if msg:
            warn(msg)
    base_payload = checkpoints.load_model_checkpoint(cfg.model.checkpoint) if cfg.model.checkpoint else None
    claim_run_dir(out, cfg.hash(), dump_config(cfg), cfg.general.name, "transfer")
    if base_payload is None:
        base_path = _pretrain(cfg, out, train_base, test_base, device, warn)
        base_payload = checkpoints.load_model_checkpoint(base_path)
    else:
        base_path = Path(cfg.model.checkpoint)
    base_model = model_from_checkpoint(base_payload).to(device).eval()

    rows = []
    for task in t.tasks:
        if task.startswith(DATASET_TASK):
            name = task[len(DATASET_TASK):]
            train_task = load_dataset(name, "train", d.root, d.num_train, seed=cfg.general.seed)
            test_task = load_dataset(name, "test", d.root, d.num_test, seed=cfg.general.seed)
            if train_task.info.shape != train_base.info.shape:
                raise UserError(f"transfer task {task}: images {train_task.info.shape} differ from the base data "
                                f"set's {train_base.info.shape}; the base network needs the same input shape")
        else:
            train_task = attribute_task(train_base, task)
            test_task = attribute_task(test_base, task)
        if t.few_shot:
            n = max(int(round(t.few_shot_fraction * len(train_task))), 2 * train_task.info.num_classes)
            train_task = train_task.subset(n, seed=cfg.general.seed)
        for run_name, pattern, k in _runs(cfg):
            rows.append(_one_run(cfg, out, task, run_name, pattern, k, train_task, test_task, base_payload,
                                 base_path, base_model, device, smoothing, certify_dataset, write_report))
            write_csv(out / "summary.csv", rows, SUMMARY_COLUMNS)
    write_markdown(out / "summary.md", _summary_text(cfg, rows, smoothing))
    return out, rows


def _summary_text(cfg: Config, rows, smoothing) -> str:
    t = cfg.transfer
    head = (f"# sparse transfer: {cfg.model.arch}, pretrain on {', '.join(t.pretrain_attributes)}, "
            f"{'few-shot (' + format(t.few_shot_fraction, 'g') + ' of the data)' if t.few_shot else 'full data'}\n\n")
    if smoothing is not None:
        head += (f"cert_acc: randomized-smoothing certified accuracy at L2 radius {t.certify_radius:g} on "
                 f"{smoothing.num_examples or 'all'} test images; {smoothing.guarantee()}.\n")
    head += ("updated_ratio: updated parameters / all parameters but the classifier; prefix_macs: share of the "
             "conv/linear multiply-adds before the first updated layer (reusable from the base network).\n\n")
    return head + markdown_table(rows, SUMMARY_COLUMNS)


def _one_run(cfg, out, task, run_name, pattern, k, train_task, test_task, base_payload, base_path, base_model,
             device, smoothing, certify_dataset, write_report) -> dict[str, Any]:
    t = cfg.transfer
    run_dir = out / task.replace(":", "_") / run_name
    path = run_dir / "checkpoint.pt"
    if path.is_file():
        return checkpoints.load_model_checkpoint(path)["meta"]["summary"]
    seed = cfg.general.seed
    info = train_task.info
    settings = FitSettings(t.epochs, t.lr, cfg.data.batch_size, seed, cfg.training.noise_sigma, cfg.training.grad_clip)
    t0 = time.perf_counter()
    if run_name == "direct":
        model = model_for(cfg.model.arch, info)
        epochs = t.pretrain_epochs
        fit(model, train_task, train_task.labels, F.cross_entropy,
            FitSettings(epochs, cfg.training.lr, cfg.data.batch_size, seed, cfg.training.noise_sigma,
                        cfg.training.grad_clip), device, run_dir / "state.pt", run_key=cfg.hash(),
            desc=f"{task} direct")
        masks = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in model.named_parameters()}
    else:
        model = _downstream_model(cfg, base_payload, info, seed + 1)
        classifier = classifier_names(model)
        sparse = None
        if pattern is not None:
            layout = unit_layout(model, pattern, t.frozen_prefix, tuple(t.group_shape))
            if t.mask_init == "gradient":
                scores = gradient_scores(model, train_task, train_task.labels, F.cross_entropy, cfg.data.batch_size,
                                         t.mask_batches, seed, device, cfg.training.noise_sigma)
            else:
                g = torch.Generator().manual_seed(seed + 2)
                scores = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
            mask = build_mask(model, layout, scores, k)
            base = {n: p.detach().clone() for n, p in model.named_parameters() if n not in classifier}
            sparse = SparseDelta(layout, mask, base, classifier, t.rigl, t.rigl_interval, t.rigl_drop_fraction,
                                 t.rigl_end)
        fit(model, train_task, train_task.labels, F.cross_entropy, settings, device, run_dir / "state.pt",
            run_key=cfg.hash(), desc=f"{task} {run_name}", sparse=sparse,
            reference=base_model if (sparse is not None and t.diffstab_weight > 0) else None,
            diffstab_weight=t.diffstab_weight if sparse is not None else 0.0, diffstab_eps=t.diffstab_eps,
            freeze_bn=True)
        masks = sparse.mask if sparse is not None else {n: torch.ones(p.shape, dtype=torch.bool)
                                                        for n, p in model.named_parameters()}
    train_s = time.perf_counter() - t0
    model.eval()
    classifier = classifier_names(model)
    total = sum(p.numel() for n, p in model.named_parameters() if n not in classifier)
    updated = mask_count(masks, classifier)
    row: dict[str, Any] = {
        "task": task, "run": run_name, "pattern": pattern or run_name, "k": k, "updated_ratio": updated / total,
        "frozen_prefix": t.frozen_prefix if pattern else 0,
        "prefix_macs": 0.0 if run_name == "direct" else prefix_mac_fraction(model, masks, info.shape),
        "clean_acc": accuracy(model, test_task, device, cfg.data.test_batch_size),
        "cert_acc": None, "cert_radius": t.certify_radius, "abstain": None, "train_s": train_s, "certify_s": None,
    }
    if smoothing is not None:
        t1 = time.perf_counter()
        crows = certify_dataset(model, test_task, smoothing, run_dir / "certify", device, seed=seed,
                                tag=f"{task}/{run_name}", desc=f"certify {task} {run_name}")
        write_report(crows, smoothing, run_dir / "certify", title=f"{task} {run_name}")
        n = max(len(crows), 1)
        row["cert_acc"] = sum(1 for r in crows if r["correct"] and r["radius"] >= t.certify_radius) / n
        row["abstain"] = sum(1 for r in crows if r["predict"] == -1) / n
        row["certify_s"] = time.perf_counter() - t1
    meta = model_meta(cfg.model.arch, info)
    if task.startswith(DATASET_TASK):
        task_meta = None  # a plain data set: its checkpoint reads like any other
    else:
        task_meta = {"scenario": SCENARIO, "attribute": task, "base_dataset": train_task.info.name.split(":")[0]}
    meta.update({
        "dataset": train_task.info.name.split(":")[0],
        "task": task_meta,
        "data_seed": seed,
        "transfer": {"base_checkpoint": None if run_name == "direct" else str(Path(base_path).resolve()),
                     "run": run_name, "pattern": pattern, "k": k, "updated": updated, "total": total,
                     "classifier": classifier, "frozen_prefix": t.frozen_prefix if pattern else 0,
                     "rigl": bool(t.rigl and pattern), "diffstab_weight": t.diffstab_weight if pattern else 0.0,
                     "few_shot": bool(t.few_shot), "train_size": len(train_task)},
        "metrics": {"clean_acc": row["clean_acc"], "cert_acc": row["cert_acc"]},
        "summary": row,
        "config_hash": cfg.hash(),
    })
    checkpoints.save_model_checkpoint(path, model.state_dict(), meta, masks)
    (run_dir / "state.pt").unlink(missing_ok=True)
    return row


def load_pair(path: str | Path) -> tuple[nn.Module, nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """``(base, finetuned, masks, meta)`` of a downstream checkpoint written by :func:`run_transfer`.

    Both models are in eval mode on the CPU. ``masks[name]`` is True where the
    fine-tuned parameter may differ from the base; everywhere else (and in every
    buffer) the two are equal bit for bit, except the classifier
    (``meta["transfer"]["classifier"]``), which has its own shape.
    """
    payload = checkpoints.load_model_checkpoint(path)
    info = payload["meta"].get("transfer")
    if not info or not info.get("base_checkpoint"):
        raise UserError(f"'{path}' is not a sparse/dense transfer checkpoint with a base network")
    base = model_from_checkpoint(checkpoints.load_model_checkpoint(info["base_checkpoint"]))
    finetuned = model_from_checkpoint(payload)
    return base, finetuned, {k: v.bool() for k, v in payload["masks"].items()}, payload["meta"]
