"""Sweeps: a grid of ordinary pruning runs and one aggregated report (seed 001's Table 2 and Figures 2-4).

A sweep file names a base config and axes::

    name: synthetic-small
    base: ../pruning/synthetic/imp.yaml       # a path (relative to this file) or a mapping
    overrides: {pruning.rounds: 1}            # applied to every cell (optional)
    axes:
      pruning.method: [imp, random]
      general.seed: [100, 200]

The axis ``config`` takes config files instead of values (each cell starts from its
file, e.g. ``config: [../pruning/cifar10/cert_imp.yaml, ../pruning/cifar10/cert_hydra.yaml]``),
for grids whose methods come with settings of their own.

Every cell (one value per axis, the cartesian product in the file's order) is an
ordinary ``abcrown-plugins run`` in ``OUT/cells/CELL`` (CELL names its overrides,
e.g. ``method-imp_seed-100``), resumable like any run; cells are tasks of the
executor (one process per cell with ``--workers N``, or Ray). A failed cell is
reported and the others go on. Finished cells are not run again, so a killed
sweep resumes where it stopped.

Outputs: ``sweep.csv`` (one row per cell and round, with the axis values),
``report.md`` (per group of cells that differ only in ``general.seed``: the dense
round and the best round of every seed, mean +- std over seeds, certified lottery
tickets counted) and ``verified_acc.png`` / ``instability.png`` (one line per group
against the remaining weights, a band from the lowest to the highest seed).
Verified accuracy is α,β-CROWN's where it was measured in every cell of a group,
else the cells' own IBP/CROWN figure; the table says which.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abcrown_plugins.config import build_config, read_yaml
from abcrown_plugins.errors import UserError
from abcrown_plugins.executor import ExecutorSettings, Task, run_tasks
from abcrown_plugins.experiments.pruning import run_pruning
from abcrown_plugins.experiments.pruning_summary import COLUMNS as RUN_COLUMNS
from abcrown_plugins.experiments.pruning_summary import best_round, verified_key
from abcrown_plugins.fileio import atomic_write_text
from abcrown_plugins.report import markdown_table, new_figure, save_figure, write_csv, write_markdown
from abcrown_plugins.runtime import progress_enabled, set_progress

__all__ = ["Cell", "Sweep", "cell_config", "load_sweep", "plan_lines", "run_cell", "run_sweep", "summary_table"]

SEED = "general.seed"
METRICS = ("std_acc", "pgd_acc", "verified", "remain_ratio", "unstable_ratio")


CONFIG_AXIS = "config"


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its folder name, its axis values (``section.key`` or ``config`` -> value)."""

    name: str
    overrides: tuple[tuple[str, Any], ...]

    def value(self, key: str) -> Any:
        return dict(self.overrides).get(key)

    @property
    def config_overrides(self) -> tuple[tuple[str, Any], ...]:
        return tuple((k, v) for k, v in self.overrides if k != CONFIG_AXIS)


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: the base config tree, overrides for every cell, and the axes."""

    name: str
    base: dict[str, Any]
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    overrides: tuple[tuple[str, Any], ...] = ()
    source: str = "sweep"
    plan: tuple[Cell, ...] = field(default=(), compare=False)

    def digest(self) -> str:
        """Names the sweep's folder and guards its resumption against a changed sweep file."""
        blob = json.dumps([self.base, [list(a) for a in self.axes], list(self.overrides)], sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _label(key: str, value: Any) -> Any:
    return Path(str(value)).stem if key == CONFIG_AXIS else value


def _cell_name(overrides: Sequence[tuple[str, Any]]) -> str:
    text = "_".join(f"{_short(k)}-{_label(k, v)}" for k, v in overrides)
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)[:150] or "cell"


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file: every cell's config must load (one line naming the first bad cell)."""
    path = Path(path)
    spec = read_yaml(path)
    if not isinstance(spec, dict) or "axes" not in spec:
        raise UserError(f"{path}: a sweep file is a mapping with 'axes' (and 'base', 'name', 'overrides')")
    unknown = set(spec) - {"name", "base", "axes", "overrides"}
    if unknown:
        raise UserError(f"{path}: unknown sweep key(s) {sorted(unknown)} (valid: name, base, axes, overrides)")
    base = _tree(path, spec.get("base") or {}, "base")
    axes = spec["axes"]
    if not isinstance(axes, dict) or not axes or not all(isinstance(v, list) and v for v in axes.values()):
        raise UserError(f"{path}: 'axes' maps config keys to non-empty lists, e.g. pruning.method: [imp, random]")
    if CONFIG_AXIS in axes:
        axes = {k: ([str(((path.parent / x) if not Path(x).is_absolute() else Path(x)).resolve()) for x in map(str, v)]
                    if k == CONFIG_AXIS else v) for k, v in axes.items()}
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise UserError(f"{path}: 'overrides' maps config keys to values")
    sweep = Sweep(name=str(spec.get("name") or path.stem), base=base,
                  axes=tuple((str(k), tuple(v)) for k, v in axes.items()),
                  overrides=tuple((str(k), v) for k, v in overrides.items()), source=str(path))
    cells = []
    for values in itertools.product(*(v for _, v in sweep.axes)):
        cell_over = tuple(zip((k for k, _ in sweep.axes), values))
        cells.append(Cell(_cell_name(cell_over), cell_over))
        cell_config(sweep, cells[-1])  # every cell must load before anything runs
    if len({c.name for c in cells}) != len(cells):
        raise UserError(f"{path}: two cells get the same folder name; make the axis values distinct")
    return Sweep(sweep.name, sweep.base, sweep.axes, sweep.overrides, sweep.source, tuple(cells))


def _tree(path: Path, base: Any, what: str) -> dict[str, Any]:
    if isinstance(base, str):
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            raise UserError(f"{path}: {what} config '{base}' not found (looked at {base_path})")
        base = read_yaml(base_path) or {}
    if not isinstance(base, dict):
        raise UserError(f"{path}: '{what}' must be a config path or a mapping")
    return base


def cell_base(sweep: Sweep, cell: Cell) -> dict[str, Any]:
    """The config tree a cell starts from: its ``config`` axis file, else the sweep's base."""
    config = cell.value(CONFIG_AXIS)
    return _tree(Path(sweep.source), config, CONFIG_AXIS) if config else sweep.base


def cell_overrides(sweep: Sweep, cell: Cell) -> list[tuple[str, Any]]:
    return [*sweep.overrides, *cell.config_overrides, ("general.progress", False)]


def cell_config(sweep: Sweep, cell: Cell):
    """The validated config of ``cell`` (base or config-axis file < sweep overrides < the cell's axis values)."""
    try:
        return build_config(cell_base(sweep, cell), cell_overrides(sweep, cell), source=f"{sweep.source} (base)",
                            override_source=f"{sweep.source}, cell {cell.name}")
    except UserError as e:
        raise UserError(f"sweep cell {cell.name}: {e}") from None


def run_cell(base: dict[str, Any], overrides: list, out: str) -> dict[str, Any]:
    """Executor task: one cell's run (resumed when its folder holds part of it); its summary rows."""
    cfg = build_config(base, [tuple(o) for o in overrides])
    shown = progress_enabled()
    set_progress(cfg.general.progress)  # the sweep's own bar reports the cells
    try:
        folder, rows = run_pruning(cfg, Path(out))
    finally:
        set_progress(shown)
    return {"folder": str(folder), "rows": rows}


def _claim(out: Path, sweep: Sweep) -> None:
    marker = out / "sweep.json"
    if marker.is_file():
        if json.loads(marker.read_text()).get("digest") != sweep.digest():
            raise UserError(f"'{out}' holds another sweep; pass another --output or delete it")
        return
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder '{out}' is not empty and holds no sweep; pass another --output")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps({"name": sweep.name, "digest": sweep.digest(),
                                          "axes": {k: list(v) for k, v in sweep.axes}}, default=str) + "\n")


def run_sweep(sweep: Sweep, out: str | Path | None = None, executor: ExecutorSettings | None = None,
              ) -> tuple[Path, list[dict[str, Any]], list[str]]:
    """Run (or resume) every cell; returns the folder, the sweep rows and one line per failed cell."""
    out = Path(out) if out is not None else Path("results") / f"sweep-{sweep.name}-{sweep.digest()}"
    _claim(out, sweep)
    tasks = []
    for cell in sweep.plan:
        tasks.append(Task(cell.name, run_cell, (cell_base(sweep, cell),
                                                 [list(o) for o in cell_overrides(sweep, cell)],
                                                 str(out / "cells" / cell.name))))
    outcomes = run_tasks(tasks, out / "results", executor, desc=f"sweep {sweep.name}")
    rows, failed = [], []
    for cell, o in zip(sweep.plan, outcomes):
        if not o.ok:
            failed.append(f"{cell.name}: {o.error}")
            continue
        for r in o.result["rows"]:
            rows.append({"cell": cell.name, **r, **{_short(k): _label(k, v) for k, v in cell.overrides}})
    write_report(sweep, out, rows, failed)
    return out, rows, failed


def _axis_columns(sweep: Sweep) -> list[str]:
    return [_short(k) for k, _ in sweep.axes]


def _groups(sweep: Sweep, rows: list[dict[str, Any]]) -> dict[tuple, dict[Any, list[dict[str, Any]]]]:
    """Rows by group (the axis values but the seed) and then by seed."""
    keys = [_short(k) for k, _ in sweep.axes if k != SEED]
    seed = _short(SEED)
    out: dict[tuple, dict[Any, list[dict[str, Any]]]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(k) for k in keys), {}).setdefault(r.get(seed), []).append(r)
    return out


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * sd:.2f}"


def summary_table(sweep: Sweep, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group: the dense row (round 0) and the best round, mean and std over seeds (fractions x 100)."""
    keys = [_short(k) for k, _ in sweep.axes if k != SEED]
    table = []
    for group, by_seed in _groups(sweep, rows).items():
        runs = list(by_seed.values())
        key = "abcrown_verified_acc" if all(verified_key(run) == "abcrown_verified_acc" for run in runs) \
            else "verified_acc"
        verifier = "α,β-CROWN" if key != "verified_acc" else "/".join(sorted({r["verifier"] for run in runs
                                                                                for r in run})).upper()
        for label, pick in (("dense", lambda run: run[0]), ("best", best_round)):
            chosen = [pick(run) for run in runs]
            table.append({**dict(zip(keys, group)), "row": label, "seeds": len(chosen),
                          "remain_ratio": _mean_std([r["remain_ratio"] for r in chosen]),
                          "std_acc": _mean_std([r["std_acc"] for r in chosen]),
                          "pgd_acc": _mean_std([r.get("pgd_acc") for r in chosen]),
                          "verified_acc": _mean_std([r[key] for r in chosen]), "verifier": verifier,
                          "lottery_tickets": sum(1 for r in chosen if r.get("lottery_ticket"))})
    return table


def _band_plot(path: Path, sweep: Sweep, rows: list[dict[str, Any]], metric: str, ylabel: str) -> None:
    fig, ax = new_figure(figsize=(7, 4.5))
    for group, by_seed in _groups(sweep, rows).items():
        runs = [sorted(run, key=lambda r: r["round"]) for run in by_seed.values()]
        n = min(len(run) for run in runs)
        xs = [100 * statistics.fmean(run[i]["remain_ratio"] for run in runs) for i in range(n)]
        key = metric if metric != "verified" else (
            "abcrown_verified_acc" if all(verified_key(run) == "abcrown_verified_acc" for run in runs)
            else "verified_acc")
        values = [[run[i][key] for run in runs] for i in range(n)]
        scale = 100 if metric != "instability" else 1
        label = ", ".join(str(g) for g in group) or sweep.name
        ax.plot(xs, [scale * statistics.fmean(v) for v in values], marker="o", label=label)
        ax.fill_between(xs, [scale * min(v) for v in values], [scale * max(v) for v in values], alpha=0.2)
    ax.invert_xaxis()
    ax.set_xlabel("remaining weights (%)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"sweep {sweep.name}: mean over seeds, band = lowest to highest seed", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def write_report(sweep: Sweep, out: Path, rows: list[dict[str, Any]], failed: list[str]) -> None:
    """``sweep.csv``, ``report.md`` and the plots from the rows of every finished cell."""
    axis_cols = _axis_columns(sweep)
    write_csv(out / "sweep.csv", rows, ["cell", *axis_cols, *[c for c in RUN_COLUMNS if c not in axis_cols]])
    keys = [_short(k) for k, _ in sweep.axes if k != SEED]
    table = summary_table(sweep, rows)
    cols = [*keys, "row", "seeds", "remain_ratio", "std_acc", "pgd_acc", "verified_acc", "verifier",
            "lottery_tickets"]
    heads = [*keys, "round", "seeds", "remaining (%)", "clean acc (%)", "PGD acc (%)", "verified acc (%)",
             "verified by", "lottery tickets (seeds)"]
    lines = [f"# sweep {sweep.name}", "",
             f"{len(sweep.plan)} cells ({', '.join(f'{k}: {len(v)}' for k, v in sweep.axes)}); "
             f"{len(failed)} failed. Per group of cells that differ only in the seed: the dense network (round 0) "
             "and each seed's best round (highest verified accuracy, then clean accuracy, then fewest weights), "
             "mean ± std over seeds. Verified accuracy is α,β-CROWN's complete verification where every cell of "
             "the group measured it, else the bound method named in 'verified by' (a lower bound of robust "
             "accuracy; PGD accuracy is an upper bound). Lottery tickets: seeds whose best round matches or beats "
             "their dense network on clean and verified accuracy.", "",
             markdown_table(table, cols, heads), ""]
    if failed:
        lines += ["## Failed cells", "", *[f"- {f}" for f in failed], ""]
    write_markdown(out / "report.md", "\n".join(lines))
    if rows:
        _band_plot(out / "verified_acc.png", sweep, rows, "verified", "verified accuracy (%)")
        _band_plot(out / "instability.png", sweep, rows, "unstable_ratio", "unstable ReLUs (%)")


def plan_lines(sweep: Sweep) -> list[str]:
    """One line per cell: its folder name and its overrides (``--dry-run``)."""
    return [f"{c.name}: " + " ".join(f"--{k} {v}" for k, v in c.overrides) for c in sweep.plan]
