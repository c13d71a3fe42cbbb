"""Run α,β-CROWN over a VNN-COMP benchmark folder: every instance a task of the executor.

:func:`run_benchmark` hands the instances of ``instances.csv`` to
:func:`abcrown_plugins.executor.run_tasks`; each task is
:func:`abcrown_plugins.abcrown.runner.verify_instance` (a long-lived α,β-CROWN
process per worker, ``sat`` witnesses re-checked in onnxruntime, crashes as
``error`` rows naming their log). Finished instances are kept under
``OUT/instances/`` so an interrupted run resumes where it stopped; each is
keyed by its index and a digest of its network's, property's and α,β-CROWN
config's contents and its timeout (:func:`instance_keys`), so a redrawn or
re-exported benchmark is verified afresh, never answered from an old result;
``results.csv``/``results.md`` list every instance in the file's order.

:func:`run_instance` runs one instance in a fresh ``abcrown.py`` process, the
way VNN-COMP's ``run_instance.sh`` does (``vnncomp run-instance``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from abcrown_plugins.abcrown.abcrown_env import AbcrownInstall, require_abcrown
from abcrown_plugins.abcrown.runner import (
    RESULTS,
    STARTUP_SLACK_S,
    InstanceResult,
    check_witness,
    parse_witness,
    read_verdict,
    verify_instance,
)
from abcrown_plugins.errors import UserError
from abcrown_plugins.executor import ExecutorSettings, Task, run_tasks, threads_per_worker
from abcrown_plugins.fileio import atomic_write_text, file_sha256
from abcrown_plugins.report import markdown_table, write_csv, write_markdown

__all__ = ["INSTANCE_CONFIG", "RESULTS", "InstanceResult", "check_instance_files", "check_witness", "instance_keys",
           "parse_witness", "read_instances", "run_benchmark", "run_instance", "run_single", "write_instance_config",
           "write_results"]

# α,β-CROWN settings for one instance on a CPU: small batches, short optimisation.
INSTANCE_CONFIG: dict[str, Any] = {
    "general": {"device": "cpu", "save_adv_example": True, "enable_incomplete_verification": True},
    "attack": {"pgd_order": "before", "pgd_restarts": 10, "pgd_steps": 50},
    "solver": {"batch_size": 64, "alpha-crown": {"iteration": 20}, "beta-crown": {"iteration": 10}},
    "bab": {"timeout": 60},
}


def read_instances(folder: Path) -> list[tuple[str, str, float]]:
    path = folder / "instances.csv"
    if not path.is_file():
        raise UserError(f"'{folder}' has no instances.csv; point to a VNN-COMP benchmark folder")
    rows = []
    for n, row in enumerate(csv.reader(path.read_text().splitlines()), 1):
        if not row:
            continue
        if len(row) != 3:
            raise UserError(f"{path}:{n}: expected 'onnx,vnnlib,timeout', got {','.join(row)!r}")
        try:
            timeout = float(row[2])
        except ValueError:
            raise UserError(f"{path}:{n}: timeout {row[2][:80]!r} is not a number") from None
        if not math.isfinite(timeout) or timeout <= 0:
            raise UserError(f"{path}:{n}: timeout {row[2][:80]!r} must be a positive finite number of seconds")
        rows.append((row[0].strip(), row[1].strip(), timeout))
    return rows


def check_instance_files(folder: Path, rows: list[tuple[str, str, float]]) -> None:
    """UserError (one line) unless every network of ``rows`` is a valid ONNX file and every property exists."""
    import onnx

    for rel in sorted({onnx_rel for onnx_rel, _, _ in rows}):
        path = folder / rel
        if not path.is_file():
            raise UserError(f"{folder / 'instances.csv'}: ONNX network {rel[:80]!r} not found")
        try:
            onnx.checker.check_model(str(path))
        except Exception as e:  # noqa: BLE001 - onnx raises protobuf and checker errors for a bad file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"'{path}' is not a valid ONNX network ({first[:80]}); export the benchmark "
                            "again") from None
    for _, rel, _ in rows:
        if not (folder / rel).is_file():
            raise UserError(f"{folder / 'instances.csv'}: property {rel[:80]!r} not found")


def run_instance(inst: AbcrownInstall, onnx: Path, vnnlib: Path, results_file: Path, timeout: float,
                 config: Path, log: Path, extra_args: tuple[str, ...] = ()) -> tuple[str, float, str]:
    """Run α,β-CROWN on one instance; returns (result, wall seconds, note). Never raises for tool failures."""
    results_file.unlink(missing_ok=True)
    cex = results_file.with_suffix(".cex.txt")
    cmd = [str(inst.python), str(inst.script), "--config", str(config), "--onnx_path", str(onnx),
           "--vnnlib_path", str(vnnlib), "--results_file", str(results_file), "--timeout", f"{timeout:g}",
           "--save_adv_example", "--cex_path", str(cex), *extra_args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, cwd=inst.verifier_dir, stdout=f, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout + STARTUP_SLACK_S)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            return "timeout", time.perf_counter() - start, "killed after timeout + slack"
    wall = time.perf_counter() - start
    first = read_verdict(results_file)
    if not first or first == "error":
        return "error", wall, f"exit code {code}, no result in {results_file.name}"
    return first, wall, "" if code == 0 else f"exit code {code}"


def run_single(onnx: str | Path, vnnlib: str | Path, results_file: str | Path, timeout: float,
               abcrown_config: str | Path | None = None) -> tuple[str, float, str]:
    """One instance, VNN-COMP ``run_instance.sh`` style: ``(result, wall seconds, note)``.

    Without ``abcrown_config`` the CPU-sized :data:`INSTANCE_CONFIG` is written
    beside ``results_file``; an instance that ends without a result still leaves
    ``error`` in ``results_file`` (the scorer reads its first line).
    """
    results = Path(results_file).resolve()
    config = Path(abcrown_config).resolve() if abcrown_config else results.with_suffix(".abcrown.yaml")
    if not abcrown_config:
        write_instance_config(config, None)
    result, wall, note = run_instance(require_abcrown(), Path(onnx).resolve(), Path(vnnlib).resolve(), results,
                                      float(timeout), config, results.with_suffix(".log"))
    if result == "error" and not results.is_file():
        atomic_write_text(results, "error\n")
    return result, wall, note


def write_instance_config(path: Path, abcrown_config: str | Path | None) -> Path:
    """The α,β-CROWN YAML every instance runs with: the user's (copied), else :data:`INSTANCE_CONFIG`."""
    if abcrown_config is None:
        atomic_write_text(path, yaml.safe_dump(INSTANCE_CONFIG, sort_keys=False))
    else:
        if not Path(abcrown_config).is_file():
            raise UserError(f"α,β-CROWN config '{abcrown_config}' not found")
        shutil.copyfile(abcrown_config, path)
    return path


def instance_tasks(rows: list[tuple[str, str, float]], folder: Path, out: Path, config: Path,
                   executor: ExecutorSettings | None = None, timeout_scale: float = 1.0) -> list[Task]:
    """One executor task per instance (keys ``NNNN``, in file order).

    α,β-CROWN gets the worker's threads; when its config puts it on a GPU
    (``general.device`` other than cpu) each task asks the executor for one.
    """
    threads = threads_per_worker(executor or ExecutorSettings())
    settings = yaml.safe_load(Path(config).read_text()) or {}
    device = str((settings.get("general") or {}).get("device", "cuda"))  # α,β-CROWN's own default is cuda
    gpus = 0.0 if device == "cpu" else 1.0
    return [Task(f"{i:04d}", verify_instance, (i, onnx, vnnlib, timeout * timeout_scale, str(folder), str(out),
                                               str(config), threads), num_gpus=gpus)
            for i, (onnx, vnnlib, timeout) in enumerate(rows)]


def outcome_rows(outcomes, rows: list[tuple[str, str, float]], out: Path) -> list[InstanceResult]:
    """Instance results in task order; a task that failed in the executor is an ``error`` row."""
    results = []
    for i, (o, (onnx, vnnlib, timeout)) in enumerate(zip(outcomes, rows)):
        if o.ok:
            results.append(InstanceResult(**o.result))
        else:
            results.append(InstanceResult(i, onnx, vnnlib, timeout, "error", 0.0, "",
                                          str(out / "logs" / f"{i:04d}.log"), f"task failed: {o.error}"))
    return results


def instance_keys(rows: list[tuple[str, str, float]], folder: Path, config: Path,
                  timeout_scale: float = 1.0) -> list[str]:
    """Per instance, a digest of what its result depends on: the contents of its network, its property and
    the α,β-CROWN config, and its scaled timeout (12 hex digits)."""
    digests: dict[Path, str] = {}

    def content(path: Path) -> str:
        if path not in digests:
            digests[path] = file_sha256(path)
        return digests[path]

    settings = content(Path(config))
    return [hashlib.sha256(f"{content(folder / onnx)} {content(folder / vnnlib)} {timeout * timeout_scale!r} "
                           f"{settings}".encode()).hexdigest()[:12] for onnx, vnnlib, timeout in rows]


def run_benchmark(folder: str | Path, out: str | Path, abcrown_config: str | Path | None = None,
                  timeout_scale: float = 1.0, limit: int | None = None,
                  executor: ExecutorSettings | None = None) -> list[InstanceResult]:
    """Run every instance of ``folder`` on the executor; writes results.csv and results.md into ``out``."""
    if not (math.isfinite(timeout_scale) and timeout_scale > 0):
        raise UserError(f"--timeout-scale must be a positive finite number, got {timeout_scale!r}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    folder, out = Path(folder).resolve(), Path(out).resolve()
    rows = read_instances(folder)[:limit]
    check_instance_files(folder, rows)
    require_abcrown()
    out.mkdir(parents=True, exist_ok=True)
    config = write_instance_config(out / "abcrown_instance.yaml", abcrown_config)
    tasks = instance_tasks(rows, folder, out, config, executor, timeout_scale)
    # a finished instance is reused only for the same network, property, timeout and α,β-CROWN settings
    keys = instance_keys(rows, folder, config, timeout_scale)
    tasks = [dataclasses.replace(task, key=f"{task.key}-{key}") for task, key in zip(tasks, keys)]
    outcomes = run_tasks(tasks, out / "instances", executor, desc="α,β-CROWN instances")
    results = outcome_rows(outcomes, rows, out)
    write_results(out, results)
    return results


COLUMNS = ["index", "onnx", "vnnlib", "timeout_s", "result", "runtime_s", "abcrown_time_s", "peak_rss_mib",
           "witness_checked", "log", "note"]


def write_results(out: Path, results: list[InstanceResult]) -> None:
    rows = [r.as_dict() for r in results]
    write_csv(out / "results.csv", rows, COLUMNS)
    counts = {k: sum(r.result == k for r in results) for k in RESULTS}
    lines = ["# α,β-CROWN on a VNN-COMP benchmark", "",
             "unsat = verified robust, sat = counterexample found (re-checked with onnxruntime).", "",
             "| " + " | ".join(RESULTS) + " | total |", "|" + "---:|" * (len(RESULTS) + 1),
             "| " + " | ".join(str(counts[k]) for k in RESULTS) + f" | {len(results)} |", "",
             markdown_table(rows, ["index", "vnnlib", "result", "runtime_s", "abcrown_time_s", "witness_checked", "note"],
                            digits=2)]
    write_markdown(out / "results.md", "\n".join(lines))
