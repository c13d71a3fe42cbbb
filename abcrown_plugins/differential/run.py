"""Certify a data set densely and with the differential engine side by side: seed 000's "time saved".

:func:`certify_compared` certifies T fine-tuned networks of one base that
classify the same images (a transfer run's sparse networks, or several
downstream checkpoints), every ``smoothing.skip``-th example, with
:func:`~abcrown_plugins.differential.certify.compare_certify`: each example by
the dense certifier and by the engine in the live, trace and multi-task
accountings, one after the other (the first rotates from example to example),
all on the example's own noise (:func:`~abcrown_plugins.smoothing.run.example_generator`).
Every engine certificate must equal the dense one
(:class:`~abcrown_plugins.differential.certify.ExactnessError` otherwise), so
the rows are those of a dense run. It writes::

    TSV_DIR_t/certify.tsv   per network, the rows of :mod:`abcrown_plugins.smoothing.run`
                            (time: the dense certifier's seconds)
    timing.tsv              per example and network: seconds of the dense certifier (dense_s),
                            of the engine alone (live_s), of the trace replay (trace_s); per
                            example, repeated on each network's row: recording the base's
                            activations once (record_s) and the one multi-task pass (multitask_s)

both rewritten atomically after every example, so a killed run resumes.
:func:`time_saved` turns timing rows into seed 000's time saved,
``1 - engine seconds / dense seconds`` over all examples, one figure per
accounting, never mixed:

- ``live``: the engine certifies the network alone, recomputing the base prefix;
- ``trace``: the base's activations on the same noise are at hand (recorded when
  the base was certified, seed 000's reuse of the pretraining verification), only
  the replay is charged; the recording (``record_s``) is reported apart;
- ``multitask``: one shared pass for all T networks against T dense runs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from abcrown_plugins.differential.certify import compare_certify
from abcrown_plugins.differential.engine import DifferentialEngine
from abcrown_plugins.errors import UserError
from abcrown_plugins.fileio import atomic_write_text
from abcrown_plugins.runtime import progress
from abcrown_plugins.smoothing.certify import ABSTAIN
from abcrown_plugins.smoothing.run import (
    SmoothingSettings,
    example_generator,
    example_indices,
    open_tsv,
    read_rows,
    resolve_batch_size,
    write_tsv,
)

__all__ = ["TIMING_COLUMNS", "TimeSaved", "certify_compared", "read_timing", "time_saved"]

TIMING_COLUMNS = ("idx", "task", "dense_s", "live_s", "trace_s", "record_s", "multitask_s")


@dataclass(frozen=True)
class TimeSaved:
    """Seed 000's time saved of each accounting (module docstring), fractions ``1 - engine / dense``.

    Negative when the engine was slower. Per network: ``live[t]``, ``trace[t]``
    and the seconds summed over ``examples`` examples; for all networks together:
    ``multitask`` (None for one network). ``record_s``: recording the base's
    activations once for all networks (not charged to ``trace``).
    """

    examples: int
    dense_s: list[float]
    live_s: list[float]
    trace_s: list[float]
    record_s: float
    multitask_s: float | None
    live: list[float]
    trace: list[float]
    multitask: float | None


def _saved(engine_s: float, dense_s: float) -> float:
    return 1.0 - engine_s / dense_s if dense_s > 0 else math.nan


def time_saved(timing: Sequence[dict[str, Any]], num_tasks: int) -> TimeSaved:
    """Sum ``timing`` rows (``timing.tsv``) per network and accounting; see :class:`TimeSaved`."""
    dense, live, trace = [0.0] * num_tasks, [0.0] * num_tasks, [0.0] * num_tasks
    per_example: dict[int, dict[str, Any]] = {}
    for r in timing:
        t = r["task"]
        dense[t] += r["dense_s"]
        live[t] += r["live_s"]
        trace[t] += r["trace_s"]
        per_example[r["idx"]] = r
    record = sum(r["record_s"] for r in per_example.values())
    multi = None if num_tasks < 2 else sum(r["multitask_s"] for r in per_example.values())
    return TimeSaved(len(per_example), dense, live, trace, record, multi,
                     [_saved(a, d) for a, d in zip(live, dense)], [_saved(a, d) for a, d in zip(trace, dense)],
                     None if multi is None else _saved(multi, sum(dense)))


def _timing_header(settings: SmoothingSettings, seed: int, tags: Sequence[str]) -> str:
    tasks = "; ".join(f"task {t} = {tag}" for t, tag in enumerate(tags))
    return (f"# dense certifier and differential engine side by side: {settings.guarantee()}; seed={seed}; "
            f"{tasks}; wall seconds; record_s and multitask_s are per example (repeated on its rows)")


def read_timing(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """``(comment line, rows)`` of a ``timing.tsv``: idx and task int, seconds float, multitask_s None when empty."""
    return read_rows(path, TIMING_COLUMNS, "timing.tsv", lambda v: {
        "idx": int(v[0]), "task": int(v[1]), "dense_s": float(v[2]), "live_s": float(v[3]), "trace_s": float(v[4]),
        "record_s": float(v[5]), "multitask_s": float(v[6]) if v[6] else None})


def _seconds(value: float) -> float:
    """Seconds as ``timing.tsv`` stores them (microseconds)."""
    return round(value, 6)


def _write_timing(path: Path, header: str, rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    buf.write(header + "\n" + "\t".join(TIMING_COLUMNS) + "\n")
    for r in sorted(rows, key=lambda r: (r["idx"], r["task"])):
        multi = "" if r["multitask_s"] is None else f"{r['multitask_s']:.6f}"
        buf.write(f"{r['idx']}\t{r['task']}\t{r['dense_s']:.6f}\t{r['live_s']:.6f}\t{r['trace_s']:.6f}\t"
                  f"{r['record_s']:.6f}\t{multi}\n")
    atomic_write_text(path, buf.getvalue())


def certify_compared(base: nn.Module, tasks: Sequence[nn.Module], datasets: Sequence[Any], settings: SmoothingSettings,
                     tsv_dirs: Sequence[str | Path], timing_path: str | Path, device: torch.device | str = "cpu",
                     seed: int = 0, tags: Sequence[str] | None = None,
                     desc: str = "certify (dense and differential)") -> tuple[list[list[dict[str, Any]]],
                                                                             list[dict[str, Any]]]:
    """Certify ``datasets[t]`` with ``tasks[t]`` densely and through the engine (module docstring).

    ``base`` and ``tasks``: eval-mode networks on ``device`` (the engine's base and
    fine-tuned networks); ``datasets[t]``: an ImageDataset holding the same images
    as ``datasets[0]`` (labels may differ: one attribute per network);
    ``tags[t]`` goes into network t's TSV comment line. Returns every network's
    rows (old and new, index order) and the timing rows. Raises UserError when
    the data sets' images differ, ExactnessError when a certificate does. A
    ``settings.batch_size`` of None is measured on the dense ``tasks[0]``
    (:func:`~abcrown_plugins.smoothing.run.resolve_batch_size`); the rows do not
    depend on it.
    """
    if not tasks or len(tasks) != len(datasets) or len(tasks) != len(tsv_dirs):
        raise ValueError("certify_compared needs one data set and one TSV folder per network")
    tags = list(tags) if tags is not None else [f"task {t}" for t in range(len(tasks))]
    sizes = {len(d) for d in datasets}
    if len(sizes) != 1:
        raise UserError(f"the networks classify data sets of different sizes ({sorted(sizes)} images); "
                        "certify downstream networks together only when they classify the same images")
    device = torch.device(device)
    engine = DifferentialEngine(base, list(tasks))
    opened = [open_tsv(d, settings, seed, tag) for d, tag in zip(tsv_dirs, tags)]
    rows = [{r["idx"]: r for r in old} for _, _, old in opened]
    timing_path = Path(timing_path)
    header = _timing_header(settings, seed, tags)
    timing: dict[int, list[dict[str, Any]]] = {}
    if timing_path.is_file():
        old_header, old = read_timing(timing_path)
        if old_header != header:
            raise UserError(f"'{timing_path}' was written with other settings or networks ({old_header[2:90]}...); "
                            "pass another --output or delete it")
        for r in old:
            timing.setdefault(r["idx"], []).append(r)
    indices = example_indices(len(datasets[0]), settings.skip, settings.num_examples)
    done = {i for i in indices if len(timing.get(i, ())) == len(tasks) and all(i in r for r in rows)}
    todo = [(pos, i) for pos, i in enumerate(indices) if i not in done]
    if todo and settings.batch_size is None:  # the dense certifier's measured batch size, on network 0
        settings = resolve_batch_size(settings, tasks[0], datasets[0][todo[0][1]][0].to(device),
                                      datasets[0].info.num_classes, device)
    for pos, idx in progress(todo, desc, len(todo)):
        x, _ = datasets[0][idx]
        labels = []
        for t, d in enumerate(datasets):
            xt, label = d[idx]
            if not torch.equal(xt, x):
                raise UserError(f"network {tags[t]} classifies other images than network {tags[0]} (example {idx} "
                                f"differs); certify downstream networks together only on the same images")
            labels.append(int(label))
        c = compare_certify(engine, x.to(device), settings.n0, settings.n, settings.alpha, settings.sigma,
                            settings.batch_size, lambda: example_generator(seed, idx, device), order=pos)
        timing[idx] = []
        s = _seconds  # rounded as the files store them, so a resumed run sums the same numbers
        for t, res in enumerate(c.results):
            rows[t][idx] = {"idx": idx, "label": labels[t], "predict": res.prediction, "radius": res.radius,
                            "correct": int(res.prediction == labels[t] and res.prediction != ABSTAIN),
                            "time": round(c.dense_s[t], 4)}
            timing[idx].append({"idx": idx, "task": t, "dense_s": s(c.dense_s[t]), "live_s": s(c.live_s[t]),
                                "trace_s": s(c.trace_s[t]), "record_s": s(c.record_s),
                                "multitask_s": None if c.multitask_s is None else s(c.multitask_s)})
        for t, (path, tsv_header, _) in enumerate(opened):
            write_tsv(path, tsv_header, list(rows[t].values()))
        _write_timing(timing_path, header, [r for rs in timing.values() for r in rs])
    if not todo:  # nothing new: make sure the files exist (an empty selection)
        for t, (path, tsv_header, _) in enumerate(opened):
            if not path.is_file():
                write_tsv(path, tsv_header, list(rows[t].values()))
        if not timing_path.is_file():
            _write_timing(timing_path, header, [])
    selected = set(indices)
    return ([sorted((r for i, r in rs.items() if i in selected), key=lambda r: r["idx"]) for rs in rows],
            [r for i in sorted(timing) if i in selected for r in sorted(timing[i], key=lambda r: r["task"])])
