"""The certify run: randomized-smoothing certification (L2) of a checkpoint on its own data split.

Loads the checkpoint (:func:`abcrown_plugins.models.load_model`), picks the data
the network classifies (its data set, or its downstream attribute task for a
transfer checkpoint) and certifies every ``smoothing.skip``-th example, one
executor task per example (:func:`certify_task`: each worker process loads the
network and the data once). Example ``idx`` draws its noise from ``(seed, idx)``
only, so every executor and any number of workers give the rows of a serial run.
Finished examples are kept under ``examples/SETTINGS`` (a digest of the TSV's
comment line: settings, seed, checkpoint), so a killed run resumes; ``certify.tsv``,
the certified-accuracy table and plot are written from all rows at the end. The
folder follows the run-folder rule (:mod:`.rundir`) with the name
``certify-CKPT-TAG`` (TAG: a digest of the checkpoint file's content); its
``run.json`` records what the rows depend on (:func:`certify_identity`: the
checkpoint's content hash, not its path, the data and the certifier's settings),
and a resume with anything different is refused with one line. ``batch_size.json``
records the forward batch size used: ``smoothing.batch_size``, or with null there
the one measured on the network (:func:`~abcrown_plugins.smoothing.run.certify_batch_size`,
cached; the rows do not depend on it), and the dense certifier's memory layout
(``layout``: channels_last where it measures faster,
:func:`~abcrown_plugins.smoothing.run.certify_layout`).

``smoothing.engine differential`` (:func:`run_certify_all`) certifies downstream
checkpoints of ``abcrown-plugins transfer`` with the exact differential engine
against the base each records (its path in ``meta.transfer.base_checkpoint``, its
content hash in ``meta.extra``: a missing or different base is one error line),
beside the dense certifier on the same noise
(:func:`abcrown_plugins.differential.certify_compared`): the same ``certify.tsv``
rows as a dense run (identical certificates, checked), ``timing.tsv`` and
``time_saved.md`` with seed 000's time saved per accounting (live, trace, and
multi-task when several checkpoints of one base are certified together, which
must classify the same images). One checkpoint writes into
``certify-CKPT-TAG-differential``; several into ``certify-multitask-TAG`` with
one ``CKPT-TAG`` folder each (CKPT: the file's stem, or its folder's name for a
transfer run's ``RUN/checkpoint.pt``). It runs in this process (the comparison is timed
side by side), whatever the executor settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.config import Config
from abcrown_plugins.differential import certify_compared, time_saved
from abcrown_plugins.errors import UserError
from abcrown_plugins.executor import ExecutorSettings, Task, run_tasks
from abcrown_plugins.fileio import atomic_write_text
from abcrown_plugins.experiments.rundir import checkpoint_identity, claim_run_dir, run_dir
from abcrown_plugins.experiments.transfer import BASE_HASH_KEY
from abcrown_plugins.models import load_model
from abcrown_plugins.report import markdown_table, write_markdown
from abcrown_plugins.runtime import select_device, set_threads
from abcrown_plugins.smoothing import warn_unreachable
from abcrown_plugins.smoothing.run import (
    SmoothingSettings,
    certify_batch_size,
    certify_example,
    certify_layout,
    inference_form,
    example_indices,
    open_tsv,
    write_report,
    write_tsv,
)
from abcrown_plugins.transfer.scenario import dataset_for_checkpoint
from abcrown_plugins.tuning import tune_allocator

__all__ = ["CertifyResult", "CertifySource", "certify_identity", "certify_task", "run_certify", "run_certify_all"]


@dataclass(frozen=True)
class CertifySource:
    """What a worker needs to rebuild the network and the data: checkpoint, split, data settings, device,
    and the network's form (``channels_last``: :func:`inference_form`, channels-last with conv+BatchNorm folded,
    where :func:`certify_layout` measures it faster)."""

    checkpoint: str
    split: str
    root: str | None
    num: int | None
    data_seed: int
    device: str
    channels_last: bool = False

    def load(self):
        """``(model, dataset)``, loaded once per process."""
        if self not in _LOADED and self.channels_last:
            model, dataset = dataclasses.replace(self, channels_last=False).load()
            _LOADED[self] = (inference_form(model), dataset)
        if self not in _LOADED:
            loaded = load_model(self.checkpoint, device=self.device)
            dataset = dataset_for_checkpoint(loaded.meta, self.split, self.root, self.num, seed=self.data_seed)
            _LOADED[self] = (loaded.model, dataset)
        return _LOADED[self]


_LOADED: dict[CertifySource, tuple[Any, Any]] = {}


def certify_task(source: CertifySource, idx: int, settings: SmoothingSettings, seed: int) -> dict[str, Any]:
    """Executor task: the TSV row of example ``idx`` (a spawned worker sets the allocator as the CLI does)."""
    tune_allocator()
    model, dataset = source.load()
    return certify_example(model, dataset, idx, settings, source.device, seed)


@dataclass(frozen=True)
class CertifyResult:
    """What a certify run produced: its folder, one row per example, the table, the settings and data set name.

    With the differential engine, ``time_saved`` holds seed 000's time saved of this
    checkpoint (``live``, ``trace``; ``multitask``: of all checkpoints certified
    together, None for one) and the seconds they come from (``dense_s``, ``live_s``,
    ``trace_s``, ``record_s``, ``multitask_s``); None with the dense engine.
    """

    out: Path
    rows: list[dict[str, Any]]
    table: list[dict[str, Any]]
    settings: SmoothingSettings
    dataset: str
    time_saved: dict[str, float | None] | None = None
    checkpoint: str | None = None
    batch_size: int | None = None


def run_certify_all(cfg: Config, checkpoints_: Sequence[str | Path], out: str | Path | None = None,
                    warn: Callable[[str], None] = lambda m: None) -> list[CertifyResult]:
    """Certify every checkpoint of ``checkpoints_``: one with either engine, several (downstream checkpoints of
    one base, certified together in multi-task mode) with ``smoothing.engine differential`` only."""
    settings = SmoothingSettings.from_config(cfg)
    if not checkpoints_:
        raise UserError("name at least one checkpoint to certify")
    if settings.engine == "differential":
        return _run_differential(cfg, settings, list(checkpoints_), out, warn)
    if len(checkpoints_) > 1:
        raise UserError(f"{len(checkpoints_)} checkpoints given: several downstream checkpoints of one base are "
                        "certified together only by the differential engine (pass --smoothing.engine differential); "
                        "with the dense engine certify one checkpoint at a time")
    return [run_certify(cfg, checkpoints_[0], out, warn)]


def run_certify(cfg: Config, checkpoint: str | Path, out: str | Path | None = None,
                warn: Callable[[str], None] = lambda m: None) -> CertifyResult:
    """Certify ``checkpoint`` as ``cfg``'s smoothing section says, on ``cfg``'s executor (module docstring)."""
    settings = SmoothingSettings.from_config(cfg)
    if settings.engine == "differential":
        return _run_differential(cfg, settings, [checkpoint], out, warn)[0]
    set_threads(cfg.general.num_threads)
    device = select_device(cfg.general.device)
    ckpt = str(checkpoints.resolve(checkpoint).resolve())
    source = CertifySource(ckpt, settings.split, cfg.data.root, cfg.data.num_test, cfg.general.seed, str(device))
    model, dataset = source.load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msg = warn_unreachable(settings.radii, settings.n, settings.alpha, settings.sigma)
    if msg:
        warn(msg)
    identity = certify_identity(cfg, settings, checkpoint_identity(ckpt), device)
    folder = run_dir(cfg, out, name=f"certify-{Path(checkpoint).stem}-{identity['checkpoint'][7:13]}")
    with claim_run_dir(folder, cfg, "certify", identity, config_bound=False):
        in_header = ("smoothing.sigma", "smoothing.n0", "smoothing.n", "smoothing.alpha", "general.seed")
        tag = "; ".join(f"{k}={v}" for k, v in identity.items() if k not in in_header)
        path, header, rows = open_tsv(folder, settings, cfg.general.seed, tag)
        layout = certify_layout(model, dataset[0][0].to(device), settings, device)
        source = dataclasses.replace(source, channels_last=layout == "channels_last")
        form, _ = source.load()  # the network as certified (built once per process, kept for local tasks)
        settings = _chosen_batch_size(settings, form, dataset, device, folder)  # measured on the form certified
        _record(folder, layout=layout)
        done = {r["idx"] for r in rows}
        tasks = [Task(f"{idx:06d}", certify_task, (source, idx, settings, cfg.general.seed))
                 for idx in example_indices(len(dataset), settings.skip, settings.num_examples) if idx not in done]
        examples = folder / "examples" / hashlib.sha256(header.encode()).hexdigest()[:12]
        outcomes = run_tasks(tasks, examples, ExecutorSettings.from_config(cfg), desc="certify")
        rows += [o.result for o in outcomes if o.ok]
        write_tsv(path, header, rows)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise UserError(f"{len(failed)} of {len(outcomes)} examples failed (first: {failed[0].key}: "
                            f"{failed[0].error}); the other rows are in {path}; run the same command again to retry "
                            "them")
        rows.sort(key=lambda r: r["idx"])
        table = write_report(rows, settings, folder, title=f"certified accuracy of {Path(checkpoint).name}")
    return CertifyResult(folder, rows, table, settings, dataset.info.name, batch_size=settings.batch_size)


#: The file of a certify run's folder that records the forward batch size used (and how it was chosen).
BATCH_SIZE_FILE = "batch_size.json"


def _chosen_batch_size(settings: SmoothingSettings, model, dataset, device, folder: Path) -> SmoothingSettings:
    """``settings`` with the configured or measured (:func:`certify_batch_size`, on the data set's first image)
    forward batch size, recorded in ``folder/batch_size.json``; the rows do not depend on it."""
    calibration = None
    if settings.batch_size is None:
        x, _ = dataset[0]
        calibration = certify_batch_size(model, x.to(device), settings, dataset.info.num_classes, device)
        settings = dataclasses.replace(settings, batch_size=calibration.batch_size)
    _record(folder, **{"smoothing.batch_size": settings.batch_size, "measured": calibration is not None,
                       "calibration": None if calibration is None else calibration.as_dict()})
    return settings


def _record(folder: Path, **fields) -> None:
    """Add ``fields`` to ``folder/batch_size.json`` (written atomically)."""
    path = folder / BATCH_SIZE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        record = {}
    atomic_write_text(path, json.dumps({**record, **fields}, indent=1) + "\n")


def certify_identity(cfg: Config, settings: SmoothingSettings, checkpoint: str, device) -> dict[str, Any]:
    """What a certify row depends on: the checkpoint's content, the data (split, root, subset, seed), the
    certifier's settings (sigma, n0, n, alpha) and the device (its generator). The batch size is not in it:
    the noise stream, hence every row, does not depend on it. Which examples are certified (skip,
    num_examples) and the table radii are not in it either."""
    return {"checkpoint": checkpoint, "smoothing.split": settings.split, "data.root": cfg.data.root,
            "data.num_test": cfg.data.num_test, "general.seed": cfg.general.seed, "smoothing.sigma": settings.sigma,
            "smoothing.n0": settings.n0, "smoothing.n": settings.n, "smoothing.alpha": settings.alpha,
            "device": str(device)}


def _label(path: str | Path) -> str:
    """A checkpoint's name in folder names: its stem, or its folder's name for a transfer run's ``checkpoint.pt``."""
    p = Path(path)
    return p.parent.name if p.stem == "checkpoint" and p.parent.name else p.stem


def _recorded_base(paths: list[str], loaded, warn: Callable[[str], None]) -> tuple[str, str]:
    """``(path, content hash)`` of the one base network every checkpoint records; UserError (one line) when a
    checkpoint records none, when the base is missing or not the one recorded, or when they record different ones."""
    bases = []
    for path, one in zip(paths, loaded):
        info = one.meta.transfer
        if info is None or not info.base_checkpoint:
            raise UserError(f"'{path}' is not a downstream checkpoint of `abcrown-plugins transfer` with a base "
                            "network (no meta.transfer.base_checkpoint); certify it with --smoothing.engine dense")
        base = Path(info.base_checkpoint)
        if not base.is_file():
            raise UserError(f"the base network '{base}' that '{path}' was fine-tuned from is missing; restore it "
                            "or certify with --smoothing.engine dense")
        found = checkpoint_identity(base)
        recorded = one.meta.extra.get(BASE_HASH_KEY)
        if recorded is None:
            warn(f"'{path}' records no content hash of its base network, so '{base}' cannot be checked to be the "
                 "one it was fine-tuned from (the certificates stay exact: the engine compares the networks "
                 "bit for bit)")
        elif recorded != found:
            raise UserError(f"the base network '{base}' is not the one '{path}' was fine-tuned from (content "
                            f"{found[:19]}..., recorded {str(recorded)[:19]}...); restore that base or certify "
                            "with --smoothing.engine dense")
        bases.append((str(base.resolve()), found))
    if len({h for _, h in bases}) > 1:
        raise UserError(f"the checkpoints were fine-tuned from different base networks ('{bases[0][0]}', "
                        f"'{next(b for b, h in bases if h != bases[0][1])}'); certify together only downstream "
                        "checkpoints of one base")
    return bases[0]


def _run_differential(cfg: Config, settings: SmoothingSettings, given: list[str | Path], out: str | Path | None,
                      warn: Callable[[str], None]) -> list[CertifyResult]:
    """Downstream checkpoints certified densely and by the engine side by side (module docstring)."""
    set_threads(cfg.general.num_threads)
    device = select_device(cfg.general.device)
    paths = [str(checkpoints.resolve(c).resolve()) for c in given]
    hashes = [checkpoint_identity(p) for p in paths]
    if len(set(hashes)) != len(hashes):
        raise UserError("the same checkpoint (by content) is given twice; name each downstream checkpoint once")
    loaded = [load_model(p, device=device) for p in paths]
    base_path, base_hash = _recorded_base(paths, loaded, warn)
    datasets = [dataset_for_checkpoint(one.meta, settings.split, cfg.data.root, cfg.data.num_test,
                                       seed=cfg.general.seed) for one in loaded]
    base = load_model(base_path, device=device).model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msg = warn_unreachable(settings.radii, settings.n, settings.alpha, settings.sigma)
    if msg:
        warn(msg)
    if cfg.executor.kind != "local" or cfg.executor.workers > 1:
        warn("the differential engine certifies in this process (dense and engine timed side by side); the "
             "executor settings are not used")
    names = [f"{_label(c)}-{h[7:13]}" for c, h in zip(given, hashes)]
    if len(paths) == 1:
        folder = run_dir(cfg, out, name=f"certify-{names[0]}-differential")
        dirs = [folder]
    else:
        digest = hashlib.sha256(",".join(sorted(hashes)).encode()).hexdigest()[:6]
        folder = run_dir(cfg, out, name=f"certify-multitask-{digest}")
        dirs = [folder / n for n in names]
    identity = {**certify_identity(cfg, settings, ",".join(hashes), device), "smoothing.engine": "differential",
                "base_checkpoint": base_hash}
    in_header = ("smoothing.sigma", "smoothing.n0", "smoothing.n", "smoothing.alpha", "general.seed", "checkpoint")
    common = "; ".join(f"{k}={v}" for k, v in identity.items() if k not in in_header)
    tags = [f"checkpoint={h}; {common}" for h in hashes]
    with claim_run_dir(folder, cfg, "certify", identity, config_bound=False):
        networks = [one.model.eval() for one in loaded]
        settings = _chosen_batch_size(settings, networks[0], datasets[0], device, folder)
        crows, timing = certify_compared(base, networks, datasets, settings, dirs,
                                         folder / "timing.tsv", device, cfg.general.seed, tags,
                                         desc="certify (dense and differential)")
        saved = time_saved(timing, len(paths))
        results = []
        for t, (path, d) in enumerate(zip(given, dirs)):
            table = write_report(crows[t], settings, d, title=f"certified accuracy of {Path(path).name} "
                                                              "(differential engine, checked against dense)")
            ts = {"live": saved.live[t], "trace": saved.trace[t], "multitask": saved.multitask,
                  "dense_s": saved.dense_s[t], "live_s": saved.live_s[t], "trace_s": saved.trace_s[t],
                  "record_s": saved.record_s, "multitask_s": saved.multitask_s}
            results.append(CertifyResult(d, crows[t], table, settings, datasets[t].info.name, ts, paths[t],
                                         settings.batch_size))
        write_markdown(folder / "time_saved.md", _time_saved_text(results, saved, settings))
    return results


def _time_saved_text(results: list[CertifyResult], saved, settings: SmoothingSettings) -> str:
    rows = [{"checkpoint": str(r.checkpoint), "dense_s": r.time_saved["dense_s"],
             "live": 100 * r.time_saved["live"], "trace": 100 * r.time_saved["trace"]} for r in results]
    text = (f"# time saved by the differential engine\n\n{saved.examples} examples, {settings.guarantee()}. Every "
            f"certificate of the engine equals the dense certifier's on the same noise (checked). Time saved = 1 - "
            f"engine seconds / dense seconds; live: the network alone, base prefix recomputed; trace: the base's "
            f"activations on that noise reused (recording them took {saved.record_s:.3f} s, not charged).\n\n"
            + markdown_table(rows, ["checkpoint", "dense_s", "live", "trace"],
                             ["checkpoint", "dense certification (s)", "time saved, live (%)",
                              "time saved, trace (%)"], digits=2))
    if saved.multitask is not None:
        text += (f"\n\nMulti-task: the {len(results)} networks in one shared pass took {saved.multitask_s:.3f} s "
                 f"against {sum(saved.dense_s):.3f} s of dense runs: time saved {100 * saved.multitask:.2f} %.")
    return text
