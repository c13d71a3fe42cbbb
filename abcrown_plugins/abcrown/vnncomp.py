"""Run α,β-CROWN over a VNN-COMP benchmark folder, one instance at a time.

Each instance runs the way VNN-COMP's ``run_instance.sh`` runs a tool:
``abcrown.py --config CFG --onnx_path ONNX --vnnlib_path VNNLIB --results_file R
--timeout T --save_adv_example``; the first line of R is the result
(``sat``/``unsat``/``timeout``/``unknown``), a ``sat`` is followed by a
witness. Every ``sat`` witness is re-checked here with onnxruntime against the
property; one that fails the check becomes ``error``. A crashing instance
becomes an ``error`` row naming its log, and the batch goes on.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from abcrown_plugins.fileio import atomic_write_text
from abcrown_plugins.errors import UserError
from abcrown_plugins.export.onnx_io import onnx_session, run_onnx
from abcrown_plugins.export.vnnlib import read_robustness_vnnlib
from abcrown_plugins.abcrown.abcrown_env import AbcrownInstall, require_abcrown
from abcrown_plugins.report import markdown_table, write_csv, write_markdown
from abcrown_plugins.runtime import progress

RESULTS = ("sat", "unsat", "timeout", "unknown", "error")

# α,β-CROWN settings for one instance on a CPU: small batches, short optimisation.
INSTANCE_CONFIG: dict[str, Any] = {
    "general": {"device": "cpu", "save_adv_example": True, "enable_incomplete_verification": True},
    "attack": {"pgd_order": "before", "pgd_restarts": 10, "pgd_steps": 50},
    "solver": {"batch_size": 64, "alpha-crown": {"iteration": 20}, "beta-crown": {"iteration": 10}},
    "bab": {"timeout": 60},
}

# Extra wall time allowed beyond the instance timeout for start-up and shut-down.
STARTUP_SLACK_S = 120.0


@dataclass
class InstanceResult:
    index: int
    onnx: str
    vnnlib: str
    timeout_s: float
    result: str
    runtime_s: float
    witness_checked: str   # "yes" (sat re-checked), "rejected", or "" (no witness)
    log: str
    note: str = ""
    abcrown_time_s: float | None = None  # α,β-CROWN's own "Time:" (verification, without start-up)


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
            rows.append((row[0].strip(), row[1].strip(), float(row[2])))
        except ValueError:
            raise UserError(f"{path}:{n}: timeout {row[2]!r} is not a number") from None
    return rows


_TIME = re.compile(r"^Time:\s*([0-9.eE+-]+)\s*$", re.MULTILINE)


def abcrown_time(log: Path) -> float | None:
    """The last ``Time: S`` α,β-CROWN printed in ``log`` (its own timing of the instance)."""
    if not log.is_file():
        return None
    found = _TIME.findall(log.read_text(errors="replace"))
    return float(found[-1]) if found else None


_PAIR = re.compile(r"\(\s*([XY])_(\d+)\s+([-+0-9.eEinfa]+)\s*\)")


def parse_witness(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``((X_0 v) ... (Y_0 v) ...)`` -> (x, y) arrays."""
    xs, ys = {}, {}
    for kind, i, v in _PAIR.findall(text):
        (xs if kind == "X" else ys)[int(i)] = float(v)
    if not xs:
        raise ValueError("no X_i values in the witness")
    x = np.array([xs[i] for i in range(len(xs))], dtype=np.float32)
    y = np.array([ys[i] for i in range(len(ys))], dtype=np.float32)
    return x, y


def check_witness(onnx_path: Path, vnnlib_path: Path, witness: str, tol: float = 1e-4) -> str:
    """Empty string if the witness is inside the box and onnxruntime confirms the violation, else why not."""
    prop = read_robustness_vnnlib(vnnlib_path)
    try:
        x, _ = parse_witness(witness)
    except (ValueError, KeyError) as e:
        return f"unreadable witness: {e}"
    if x.size != prop.lower.size:
        return f"witness has {x.size} inputs, the property {prop.lower.size}"
    if (x < prop.lower - tol).any() or (x > prop.upper + tol).any():
        return "witness lies outside the input box"
    session = onnx_session(onnx_path)
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    out = run_onnx(session, np.clip(x, prop.lower, prop.upper).reshape(shape)).flatten()
    others = np.delete(out, prop.label)
    if not (others >= out[prop.label]).any():
        return f"onnxruntime does not confirm the violation (label logit {out[prop.label]:.6g} is the largest)"
    return ""


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
    first = results_file.read_text().strip().splitlines()[0].strip() if results_file.is_file() and \
        results_file.read_text().strip() else ""
    if first not in RESULTS or first == "error":
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
        atomic_write_text(config, yaml.safe_dump(INSTANCE_CONFIG, sort_keys=False))
    result, wall, note = run_instance(require_abcrown(), Path(onnx).resolve(), Path(vnnlib).resolve(), results,
                                      float(timeout), config, results.with_suffix(".log"))
    if result == "error" and not results.is_file():
        atomic_write_text(results, "error\n")
    return result, wall, note


def run_benchmark(folder: str | Path, out: str | Path, abcrown_config: str | Path | None = None,
                  timeout_scale: float = 1.0, limit: int | None = None) -> list[InstanceResult]:
    """Run every instance of ``folder``; writes results.csv and results.md into ``out``."""
    inst = require_abcrown()
    folder, out = Path(folder).resolve(), Path(out).resolve()
    rows = read_instances(folder)[:limit]
    out.mkdir(parents=True, exist_ok=True)
    config = out / "abcrown_instance.yaml"
    if abcrown_config is None:
        atomic_write_text(config, yaml.safe_dump(INSTANCE_CONFIG, sort_keys=False))
    else:
        shutil.copyfile(abcrown_config, config)
    work = out / "work"
    work.mkdir(exist_ok=True)
    results: list[InstanceResult] = []
    for i, (onnx, vnnlib, timeout) in enumerate(progress(rows, desc="instances", total=len(rows), leave=True)):
        onnx_path, vnn_src = folder / onnx, folder / vnnlib
        log = out / "logs" / f"{i:04d}.log"
        if not onnx_path.is_file() or not vnn_src.is_file():
            results.append(InstanceResult(i, onnx, vnnlib, timeout, "error", 0.0, "", str(log),
                                          "onnx or vnnlib file missing"))
            continue
        # a private copy: α,β-CROWN writes a compiled cache next to the vnnlib it reads
        vnn_copy = work / f"{i:04d}_{vnn_src.name}"
        shutil.copyfile(vnn_src, vnn_copy)
        res_file = out / "results" / f"{i:04d}.txt"
        res_file.parent.mkdir(exist_ok=True)
        result, wall, note = run_instance(inst, onnx_path, vnn_copy, res_file, timeout * timeout_scale, config, log)
        checked = ""
        if result == "sat":
            witness = "\n".join(res_file.read_text().splitlines()[1:])
            why = check_witness(onnx_path, vnn_src, witness)
            checked = "rejected" if why else "yes"
            if why:
                result, note = "error", f"sat witness rejected: {why}"
        results.append(InstanceResult(i, onnx, vnnlib, timeout, result, wall, checked, str(log), note,
                                      abcrown_time(log)))
        write_results(out, results)
    write_results(out, results)
    return results


COLUMNS = ["index", "onnx", "vnnlib", "timeout_s", "result", "runtime_s", "abcrown_time_s", "witness_checked", "log",
           "note"]


def write_results(out: Path, results: list[InstanceResult]) -> None:
    rows = [asdict(r) for r in results]
    write_csv(out / "results.csv", rows, COLUMNS)
    counts = {k: sum(r.result == k for r in results) for k in RESULTS}
    lines = ["# α,β-CROWN on a VNN-COMP benchmark", "",
             "unsat = verified robust, sat = counterexample found (re-checked with onnxruntime).", "",
             "| " + " | ".join(RESULTS) + " | total |", "|" + "---:|" * (len(RESULTS) + 1),
             "| " + " | ".join(str(counts[k]) for k in RESULTS) + f" | {len(results)} |", "",
             markdown_table(rows, ["index", "vnnlib", "result", "runtime_s", "abcrown_time_s", "witness_checked", "note"],
                            digits=2)]
    write_markdown(out / "results.md", "\n".join(lines))
