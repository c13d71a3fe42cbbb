"""``abcrown-plugins transfer``: pretrain on synthetic attributes, fine-tune sparse deltas, certify each.

Layout of the output folder::

    config.yaml, run.json              the resolved config; the run's identity (its settings and the
                                       content hash of model.checkpoint): a resume with anything
                                       different is refused
    pretrain/checkpoint.pt             the base network (one head per pretraining attribute)
    TASK/RUN/checkpoint.pt             one downstream network per task and run, RUN in
                                       direct, dense, PATTERN-kK (e.g. unstructured-k0.04)
    TASK/RUN/certify/...               randomized-smoothing certification (smoothing section)
    differential/GROUP/timing.tsv      the sparse networks of GROUP (those that classify the same images:
                                       every attribute task, or one ``dataset:NAME`` task) certified
                                       densely and by the exact differential engine side by side
    summary.csv, summary.md            one row per downstream network, one ``multitask`` row per group;
                                       summary.md adds the seed 000 Table 1 form (pattern x k)

Every sparse network (PATTERN-kK) is certified twice on the same noise, by the
dense certifier and by :class:`~abcrown_plugins.differential.DifferentialEngine`
against the base (:func:`abcrown_plugins.differential.certify_compared`): the
certificates must be identical (a difference raises
:class:`~abcrown_plugins.differential.ExactnessError`, never a row), and the
summary reports seed 000's time saved, ``1 - engine seconds / dense seconds``,
per accounting and never mixed: ``time_saved_live`` (the network alone, base
prefix recomputed), ``time_saved_trace`` (the base's activations on the same
noise reused, as the seed reuses the pretraining certification) on each
network's row, and ``time_saved_multitask`` (all sparse networks of a group in
one shared pass against their dense runs) on the group's ``multitask`` row.
Direct and dense runs are certified densely only. ``cert_acc@R`` is the
certified accuracy at each ``smoothing.radii`` entry.

Mask allocation is verification-aware by default (``transfer.frozen_prefix``
null): per pattern and k the longest prefix of layers whose successors still
hold the budget gets no update
(:func:`~abcrown_plugins.transfer.masks.verification_aware_prefix`), so the
engine reuses the base's work up to there; ``frozen_prefix: 0`` lets the
gradient choose any layer (the first conv then changes and nothing is reused).

A downstream checkpoint records, besides the folded weights and the usual
metadata, ``meta.transfer`` (:class:`~abcrown_plugins.checkpoints.TransferInfo`:
``base_checkpoint``: the absolute path of the base checkpoint, ``pattern``,
``k``, ``updated``, ``total``, ``classifier``, ``frozen_prefix``: the prefix
actually frozen), the base file's content hash (``meta.extra[BASE_HASH_KEY]``,
``sha256:HEX``: ``certify --smoothing.engine differential`` refuses another
base) and, in ``masks``, a bool tensor for *every* parameter:
True where the weight may differ from the base (the classifier is all True),
False where it equals the base bit for bit. :func:`load_pair` reads a
``(base, finetuned)`` pair back. Finished runs are skipped on restart; an
unfinished one resumes after its last epoch. The sparse-transfer methods
themselves (masks, RigL, DiffStab, fine-tuning) live in :mod:`abcrown_plugins.transfer`;
this module only runs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from abcrown_plugins import checkpoints
from abcrown_plugins.checkpoints import ModelMeta, TaskInfo, TransferInfo
from abcrown_plugins.config import Config
from abcrown_plugins.config.schema import DATASET_TASK
from abcrown_plugins.data import ImageDataset, load_dataset
from abcrown_plugins.differential import certify_compared, time_saved
from abcrown_plugins.errors import UserError
from abcrown_plugins.experiments.rundir import checkpoint_identity, claim_run_dir, run_dir
from abcrown_plugins.models import build, load_model, model_for, model_meta
from abcrown_plugins.report import markdown_table, write_csv, write_markdown
from abcrown_plugins.runtime import seed_everything, select_device, set_threads
from abcrown_plugins.smoothing import warn_unreachable
from abcrown_plugins.smoothing.run import SmoothingSettings, certified_accuracy, certify_dataset, write_report
from abcrown_plugins.transfer.finetune import FitSettings, SparseDelta, accuracy, fit, gradient_scores, reinit_classifier
from abcrown_plugins.transfer.masks import (build_mask, classifier_names, mask_count, prefix_mac_fraction, unit_layout,
                                            verification_aware_prefix)
from abcrown_plugins.transfer.scenario import (
    SCENARIO,
    attribute_task,
    check_attributes,
    head_accuracy,
    multi_head_loss,
    pretrain_set,
)

__all__ = ["BASE_HASH_KEY", "DATASET_TASK", "SUMMARY_COLUMNS", "TransferRun", "load_pair", "run_transfer",
           "seed_table", "summary_columns"]

#: Columns of summary.csv; :func:`summary_columns` inserts ``cert_acc@R`` for each smoothing radius after
#: ``cert_radius``. ``certify_s``: seconds of the dense certifier (a multitask row: of all its networks);
#: ``time_saved_*``: fractions ``1 - engine / dense`` (module docstring), empty where not measured.
SUMMARY_COLUMNS = ["task", "run", "pattern", "k", "updated_ratio", "frozen_prefix", "prefix_macs", "clean_acc",
                   "cert_acc", "cert_radius", "abstain", "train_s", "certify_s", "time_saved_live",
                   "time_saved_trace", "time_saved_multitask"]
#: Key of ``meta.extra`` holding the base checkpoint's content hash (``sha256:HEX``) in a downstream checkpoint.
BASE_HASH_KEY = "base_checkpoint_sha256"
_MULTITASK = "multitask"


def _radius_column(r: float) -> str:
    return f"cert_acc@{r:g}"


def summary_columns(radii) -> list[str]:
    """:data:`SUMMARY_COLUMNS` with ``cert_acc@R`` for every radius R of ``radii`` (sorted) after ``cert_radius``."""
    i = SUMMARY_COLUMNS.index("cert_radius") + 1
    return SUMMARY_COLUMNS[:i] + [_radius_column(r) for r in sorted(radii)] + SUMMARY_COLUMNS[i:]


@dataclass(frozen=True)
class TransferRun:
    """What every downstream run of one experiment shares: config, folder, device, base network, certifier."""

    cfg: Config
    out: Path
    device: torch.device
    base_checkpoint: checkpoints.ModelCheckpoint
    base_model: nn.Module
    smoothing: SmoothingSettings | None
    base_hash: str


@dataclass(frozen=True)
class DownstreamTask:
    """One downstream task: its name (an attribute or ``dataset:NAME``) and its train / test splits."""

    name: str
    train: ImageDataset
    test: ImageDataset


def _pretrain_meta(cfg: Config, info, heads) -> ModelMeta:
    return model_meta(cfg.model.arch, info).replace(
        num_classes=sum(k for _, k in heads), heads=[[a, k] for a, k in heads],
        task=TaskInfo(scenario=SCENARIO, base_dataset=info.name, attributes=[a for a, _ in heads]),
        data_seed=cfg.general.seed)


def _pretrain(cfg: Config, out: Path, train_base, test_base, device) -> Path:
    path = out / "pretrain" / "checkpoint.pt"
    if path.is_file():
        return path
    t = cfg.transfer
    pre = pretrain_set(train_base, t.pretrain_attributes)
    info = train_base.info
    model = build(cfg.model.arch, info.channels, info.size, pre.num_outputs, info.mean, info.std)
    settings = FitSettings(epochs=t.pretrain_epochs, lr=cfg.training.lr, batch_size=cfg.data.batch_size,
                           seed=cfg.general.seed, noise_sigma=cfg.training.noise_sigma,
                           grad_clip=cfg.training.grad_clip)

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
    meta = _pretrain_meta(cfg, info, pre.heads).replace(
        metrics={"head_acc": accs, "train_s": time.perf_counter() - t0}, config_hash=cfg.hash())
    checkpoints.save_model_checkpoint(path, model.state_dict(), meta)
    (out / "pretrain" / "state.pt").unlink(missing_ok=True)
    return path


def _downstream_model(run: TransferRun, info, seed: int) -> nn.Module:
    """The base network with a fresh, re-initialised classifier of ``info.num_classes`` outputs."""
    return _downstream_model_of(run.cfg, run.base_checkpoint, info, seed)


def _downstream_model_of(cfg: Config, base: checkpoints.ModelCheckpoint, info, seed: int) -> nn.Module:
    arch = cfg.model.arch
    model = model_for(arch, info)
    cls = set(classifier_names(model))
    state = {k: v for k, v in base.state_dict.items() if k not in cls}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != cls:
        raise UserError(f"base checkpoint does not fit model '{arch}' (missing {sorted(missing)[:3]}, "
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


def _task(cfg: Config, name: str, train_base, test_base) -> DownstreamTask:
    """The splits of downstream task ``name`` (few-shot subset applied)."""
    d, t = cfg.data, cfg.transfer
    if name.startswith(DATASET_TASK):
        dataset = name[len(DATASET_TASK):]
        train_task = load_dataset(dataset, "train", d.root, d.num_train, seed=cfg.general.seed)
        test_task = load_dataset(dataset, "test", d.root, d.num_test, seed=cfg.general.seed)
        if train_task.info.shape != train_base.info.shape:
            raise UserError(f"transfer task {name}: images {train_task.info.shape} differ from the base data "
                            f"set's {train_base.info.shape}; the base network needs the same input shape")
    else:
        train_task = attribute_task(train_base, name)
        test_task = attribute_task(test_base, name)
    if t.few_shot:
        n = max(int(round(t.few_shot_fraction * len(train_task))), 2 * train_task.info.num_classes)
        train_task = train_task.subset(n, seed=cfg.general.seed)
    return DownstreamTask(name, train_task, test_task)


def run_transfer(cfg: Config, out: Path | None = None,
                 warn: Callable[[str], None] = lambda m: None) -> tuple[Path, list[dict[str, Any]]]:
    """Run (or resume) the whole transfer experiment of ``cfg``; returns the folder and the summary rows."""
    t = cfg.transfer
    check_attributes(t.pretrain_attributes, [x for x in t.tasks if not x.startswith(DATASET_TASK)])
    smoothing = SmoothingSettings.from_config(cfg) if t.certify else None
    out = run_dir(cfg, out)
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
    given = checkpoints.read_model_checkpoint(cfg.model.checkpoint) if cfg.model.checkpoint else None
    identity = {}
    if given is not None:
        with torch.random.fork_rng(devices=[]):  # a base that does not fit fails here, before the claim
            _downstream_model_of(cfg, given, train_base.info, cfg.general.seed)
        identity["model.checkpoint"] = checkpoint_identity(cfg.model.checkpoint)  # its content, not its path
    tasks = [_task(cfg, name, train_base, test_base) for name in t.tasks]  # bad tasks fail before the claim
    with claim_run_dir(out, cfg, "transfer", identity):
        base = given or checkpoints.read_model_checkpoint(_pretrain(cfg, out, train_base, test_base, device))
        run = TransferRun(cfg=cfg, out=out, device=device, base_checkpoint=base,
                          base_model=load_model(base, device=device).model.eval(), smoothing=smoothing,
                          base_hash=checkpoint_identity(base.path))
        columns = summary_columns(smoothing.radii if smoothing is not None else ())
        rows, sparse = [], []
        for task in tasks:
            for run_name, pattern, k in _runs(cfg):
                rows.append(_one_run(run, task, run_name, pattern, k))
                if pattern is not None:
                    sparse.append((task, rows[-1]))
                write_csv(out / "summary.csv", rows, columns)
        if smoothing is not None:
            for group, members in _groups(sparse).items():
                multi = _certify_sparse(run, group, members)
                if multi is not None:
                    rows.append(multi)
                write_csv(out / "summary.csv", rows, columns)
        write_markdown(out / "summary.md", _summary_text(cfg, rows, smoothing))
    return out, rows


def _groups(sparse: list[tuple[DownstreamTask, dict[str, Any]]]) -> dict[str, list[tuple[DownstreamTask, dict]]]:
    """Sparse runs by the images they classify: every attribute task shares the base data set's images; a
    ``dataset:NAME`` task has its own."""
    out: dict[str, list] = {}
    for task, row in sparse:
        key = task.name.replace(":", "_") if task.name.startswith(DATASET_TASK) else "attributes"
        out.setdefault(key, []).append((task, row))
    return out


def _certify_sparse(run: TransferRun, group: str, members: list[tuple[DownstreamTask, dict[str, Any]]]):
    """Certify a group's sparse networks densely and by the engine side by side (module docstring); fill their
    rows' certification and time-saved columns; the group's ``multitask`` row (None for one network)."""
    settings, device, seed = run.smoothing, run.device, run.cfg.general.seed
    folders = [_run_folder(run, task, row["run"]) for task, row in members]
    models = [load_model(f / "checkpoint.pt", device=device).model.eval() for f in folders]
    names = [f"{task.name}/{row['run']}" for task, row in members]
    crows, timing = certify_compared(run.base_model, models, [task.test for task, _ in members], settings,
                                     [f / "certify" for f in folders], run.out / "differential" / group / "timing.tsv",
                                     device, seed, tags=names, desc=f"certify {group} (dense and differential)")
    saved = time_saved(timing, len(members))
    for t, ((task, row), folder) in enumerate(zip(members, folders)):
        write_report(crows[t], settings, folder / "certify", title=names[t])
        row.update(_cert_columns(run, crows[t]))
        row.update(certify_s=saved.dense_s[t], time_saved_live=saved.live[t], time_saved_trace=saved.trace[t])
    if saved.multitask is None:
        return None
    return {"task": group, "run": f"{_MULTITASK}-T{len(members)}", "pattern": _MULTITASK, "k": None,
            "certify_s": sum(saved.dense_s), "time_saved_multitask": saved.multitask}


def _cert_columns(run: TransferRun, crows: list[dict[str, Any]]) -> dict[str, Any]:
    """cert_acc (at transfer.certify_radius), cert_acc@R for each smoothing radius, abstain, from TSV rows."""
    radii = sorted(run.smoothing.radii)
    n = max(len(crows), 1)
    out = {_radius_column(r): a for r, a in zip(radii, certified_accuracy(crows, radii))}
    out["cert_acc"] = certified_accuracy(crows, [run.cfg.transfer.certify_radius])[0]
    out["abstain"] = sum(1 for r in crows if r["predict"] == -1) / n
    return out


def seed_table(rows: list[dict[str, Any]], radii) -> str:
    """Seed 000's Table 1 form: per sparsity pattern, certified accuracy at each radius and time saved (live,
    trace) per k, the direct and dense runs as reference columns; mean over downstream tasks; then the
    multi-task rows. Percentages."""
    ks = sorted({r["k"] for r in rows if r.get("pattern") not in ("direct", "dense", _MULTITASK)})
    tasks = sorted({r["task"] for r in rows if r.get("pattern") != _MULTITASK})

    def mean(pattern: str, k, key: str) -> str:
        vals = [r[key] for r in rows if r.get("pattern") == pattern and (k is None or r["k"] == k)
                and r.get(key) is not None]
        return "" if not vals else f"{100 * sum(vals) / len(vals):.1f}"

    metrics = [(_radius_column(r), f"cert acc r={r:g} (%)") for r in sorted(radii)]
    metrics += [("time_saved_live", "time saved, live (%)"), ("time_saved_trace", "time saved, trace (%)")]
    out = []
    for pattern in [p for p in ("unstructured", "structured", "groupwise") if any(r.get("pattern") == p
                                                                                 for r in rows)]:
        for key, label in metrics:
            row = {"pattern": pattern, "metric": label, "direct": mean("direct", None, key),
                   "dense": mean("dense", None, key)}
            row.update({f"k{k:g}": mean(pattern, k, key) for k in ks})
            out.append(row)
    cols = ["pattern", "metric", "direct", "dense"] + [f"k{k:g}" for k in ks]
    heads = ["Sparsity pattern", "Metric", "Direct train (100 %)", "Dense transfer (100 %)"] + \
        [f"k={100 * k:g} %" for k in ks]
    text = (f"Seed 000 Table 1 form, mean over {len(tasks)} downstream task(s) ({', '.join(tasks)}); time saved = "
            "1 - engine seconds / dense seconds on the same images and noise (live: the network alone; trace: the "
            "base's activations reused):\n\n" + markdown_table(out, cols, heads))
    multi = [r for r in rows if r.get("pattern") == _MULTITASK]
    if multi:
        text += ("\n\nMulti-task: all sparse networks of a group certified in one shared pass against their dense "
                 "runs:\n\n" + markdown_table(
                     [{**r, "saved": f"{100 * r['time_saved_multitask']:.1f}"} for r in multi],
                     ["task", "run", "certify_s", "saved"],
                     ["Images", "Networks", "dense certification (s)", "time saved, multi-task (%)"]))
    return text


def _summary_text(cfg: Config, rows, smoothing) -> str:
    t = cfg.transfer
    head = (f"# sparse transfer: {cfg.model.arch}, pretrain on {', '.join(t.pretrain_attributes)}, "
            f"{'few-shot (' + format(t.few_shot_fraction, 'g') + ' of the data)' if t.few_shot else 'full data'}\n\n")
    if smoothing is not None:
        head += (f"cert_acc: randomized-smoothing certified accuracy at L2 radius {t.certify_radius:g} on "
                 f"{smoothing.num_examples or 'all'} test images (cert_acc@R: at radius R); "
                 f"{smoothing.guarantee()}. Every sparse network was certified densely and by the exact "
                 f"differential engine on the same noise, with identical certificates (checked). time_saved_*: "
                 f"1 - engine seconds / dense seconds (certify_s); live: the network alone, base prefix "
                 f"recomputed; trace: the base's activations on that noise reused (their recording not charged); "
                 f"multitask: the group's sparse networks in one shared pass.\n")
    head += ("updated_ratio: updated parameters / all parameters but the classifier; frozen_prefix: layers kept "
             "equal to the base; prefix_macs: share of the conv/linear multiply-adds before the first updated "
             "layer (reusable from the base network).\n\n")
    columns = summary_columns(smoothing.radii if smoothing is not None else ())
    text = head + markdown_table(rows, columns)
    if smoothing is not None:
        text += "\n\n" + seed_table(rows, smoothing.radii)
    return text


def _all_true(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.ones(p.shape, dtype=torch.bool) for n, p in model.named_parameters()}


def _train_downstream(run: TransferRun, task: DownstreamTask, run_name: str, pattern: str | None, k: float,
                      run_dir_: Path) -> tuple[nn.Module, dict[str, torch.Tensor], int]:
    """Train one downstream network (direct, dense, or a sparse delta); returns it, its update mask and the
    number of leading layers frozen (``transfer.frozen_prefix``, or the verification-aware one when null)."""
    cfg, t, device, seed = run.cfg, run.cfg.transfer, run.device, run.cfg.general.seed
    info = task.train.info
    if run_name == "direct":
        model = model_for(cfg.model.arch, info)
        fit(model, task.train, task.train.labels, F.cross_entropy,
            FitSettings(epochs=t.pretrain_epochs, lr=cfg.training.lr, batch_size=cfg.data.batch_size, seed=seed,
                        noise_sigma=cfg.training.noise_sigma, grad_clip=cfg.training.grad_clip),
            device, run_dir_ / "state.pt", run_key=cfg.hash(), desc=f"{task.name} direct")
        return model, _all_true(model), 0
    model = _downstream_model(run, info, seed + 1)
    classifier = classifier_names(model)
    sparse = None
    frozen = 0
    if pattern is not None:
        frozen = t.frozen_prefix if t.frozen_prefix is not None else \
            verification_aware_prefix(model, pattern, k, tuple(t.group_shape))
        layout = unit_layout(model, pattern, frozen, tuple(t.group_shape))
        if t.mask_init == "gradient":
            scores = gradient_scores(model, task.train, task.train.labels, F.cross_entropy, cfg.data.batch_size,
                                     t.mask_batches, seed, device, cfg.training.noise_sigma)
        else:
            g = torch.Generator().manual_seed(seed + 2)
            scores = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
        mask = build_mask(model, layout, scores, k)
        base = {n: p.detach().clone() for n, p in model.named_parameters() if n not in classifier}
        sparse = SparseDelta(layout, mask, base, classifier, t.rigl, t.rigl_interval, t.rigl_drop_fraction,
                             t.rigl_end)
    settings = FitSettings(epochs=t.epochs, lr=t.lr, batch_size=cfg.data.batch_size, seed=seed,
                           noise_sigma=cfg.training.noise_sigma, grad_clip=cfg.training.grad_clip)
    fit(model, task.train, task.train.labels, F.cross_entropy, settings, device, run_dir_ / "state.pt",
        run_key=cfg.hash(), desc=f"{task.name} {run_name}", sparse=sparse,
        reference=run.base_model if (sparse is not None and t.diffstab_weight > 0) else None,
        diffstab_weight=t.diffstab_weight if sparse is not None else 0.0, diffstab_eps=t.diffstab_eps,
        freeze_bn=True)
    return model, (sparse.mask if sparse is not None else _all_true(model)), frozen


def _run_folder(run: TransferRun, task: DownstreamTask, run_name: str) -> Path:
    return run.out / task.name.replace(":", "_") / run_name


def _one_run(run: TransferRun, task: DownstreamTask, run_name: str, pattern: str | None, k: float) -> dict[str, Any]:
    """Train, evaluate and save one downstream network (read back when already finished); a direct or dense
    one is certified here, a sparse one afterwards with its group (:func:`_certify_sparse`)."""
    cfg, t, device, seed = run.cfg, run.cfg.transfer, run.device, run.cfg.general.seed
    folder = _run_folder(run, task, run_name)
    path = folder / "checkpoint.pt"
    if path.is_file():
        return dict(checkpoints.read_model_checkpoint(path).meta.summary)
    t0 = time.perf_counter()
    model, masks, frozen = _train_downstream(run, task, run_name, pattern, k, folder)
    train_s = time.perf_counter() - t0
    model.eval()
    info = task.train.info
    classifier = classifier_names(model)
    total = sum(p.numel() for n, p in model.named_parameters() if n not in classifier)
    updated = mask_count(masks, classifier)
    row: dict[str, Any] = {
        "task": task.name, "run": run_name, "pattern": pattern or run_name, "k": k, "updated_ratio": updated / total,
        "frozen_prefix": frozen,
        "prefix_macs": 0.0 if run_name == "direct" else prefix_mac_fraction(model, masks, info.shape),
        "clean_acc": accuracy(model, task.test, device, cfg.data.test_batch_size),
        "cert_acc": None, "cert_radius": t.certify_radius, "abstain": None, "train_s": train_s, "certify_s": None,
    }
    if run.smoothing is not None and pattern is None:
        crows = certify_dataset(model, task.test, run.smoothing, folder / "certify", device, seed=seed,
                                tag=f"{task.name}/{run_name}", desc=f"certify {task.name} {run_name}")
        write_report(crows, run.smoothing, folder / "certify", title=f"{task.name} {run_name}")
        row.update(_cert_columns(run, crows))
        row["certify_s"] = sum(r["time"] for r in crows)
    base_dataset = task.train.info.name.split(":")[0]
    meta = model_meta(cfg.model.arch, info).replace(
        dataset=base_dataset,
        # a plain data set's checkpoint reads like any other; an attribute task says which attribute
        task=None if task.name.startswith(DATASET_TASK) else TaskInfo(scenario=SCENARIO, base_dataset=base_dataset,
                                                                       attribute=task.name),
        data_seed=seed,
        transfer=TransferInfo(
            base_checkpoint=None if run_name == "direct" else str(run.base_checkpoint.path.resolve()),
            run=run_name, pattern=pattern, k=k, updated=updated, total=total, classifier=classifier,
            frozen_prefix=frozen, rigl=bool(t.rigl and pattern),
            diffstab_weight=t.diffstab_weight if pattern else 0.0, few_shot=bool(t.few_shot),
            train_size=len(task.train)),
        metrics={"clean_acc": row["clean_acc"], "cert_acc": row["cert_acc"]},
        summary=row,
        config_hash=cfg.hash(),
        **({} if run_name == "direct" else {BASE_HASH_KEY: run.base_hash}))
    checkpoints.save_model_checkpoint(path, model.state_dict(), meta, masks)
    (folder / "state.pt").unlink(missing_ok=True)
    return row


def load_pair(path: str | Path) -> tuple[nn.Module, nn.Module, dict[str, torch.Tensor], ModelMeta]:
    """``(base, finetuned, masks, meta)`` of a downstream checkpoint written by :func:`run_transfer`.

    Both models are in eval mode on the CPU. ``masks[name]`` is True where the
    fine-tuned parameter may differ from the base; everywhere else (and in every
    buffer) the two are equal bit for bit, except the classifier
    (``meta.transfer.classifier``), which has its own shape.
    """
    finetuned = load_model(path)
    info = finetuned.meta.transfer
    if info is None or not info.base_checkpoint:
        raise UserError(f"'{path}' is not a sparse/dense transfer checkpoint with a base network")
    base = load_model(info.base_checkpoint)
    return base.model, finetuned.model, finetuned.checkpoint.masks, finetuned.meta
