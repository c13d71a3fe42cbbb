"""Verify VNN-COMP instances with α,β-CROWN: one long-lived α,β-CROWN process per worker, results re-checked.

:class:`AbcrownWorker` drives :mod:`abcrown_plugins.abcrown.worker` (started with
α,β-CROWN's own interpreter) and hands it one instance at a time, the way
VNN-COMP's ``run_instance.sh`` would run the tool: ``--onnx_path --vnnlib_path
--results_file --timeout --save_adv_example --cex_path``. The first line of the
results file is the verdict (``sat``/``unsat``/``timeout``/``unknown``), a
``sat`` is followed by a witness.

:func:`verify_instance` is the executor task: it never raises for a tool
failure. An α,β-CROWN exception, a dead worker or a missing result is
``error`` (never ``timeout`` or ``unknown``); an instance still running
``STARTUP_SLACK_S`` after its timeout is killed and is ``timeout``; every
``sat`` witness is re-run in onnxruntime and one that does not violate the
property is ``error``.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from abcrown_plugins.abcrown.abcrown_env import AbcrownInstall, require_abcrown
from abcrown_plugins.export.onnx_io import onnx_session, run_onnx
from abcrown_plugins.export.vnnlib import read_robustness_vnnlib

__all__ = ["RESULTS", "STARTUP_SLACK_S", "AbcrownWorker", "InstanceResult", "check_witness", "close_workers",
           "parse_witness", "read_verdict", "verify_instance"]

RESULTS = ("sat", "unsat", "timeout", "unknown", "error")

# Extra wall time allowed beyond the instance timeout for start-up and shut-down.
STARTUP_SLACK_S = 120.0

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
MARK = "@@abcrown_plugins.worker@@ "  # the worker's reply prefix (worker.MARK; the worker imports nothing of ours)


@dataclass
class InstanceResult:
    """One instance: α,β-CROWN's verdict (re-checked), its times and the peak memory of its process."""

    index: int
    onnx: str
    vnnlib: str
    timeout_s: float
    result: str
    runtime_s: float
    witness_checked: str   # "yes" (sat re-checked), "rejected", or "" (no witness)
    log: str
    note: str = ""
    abcrown_time_s: float | None = None  # α,β-CROWN's own time for the instance (without start-up)
    peak_rss_mib: float | None = None    # peak resident memory of the α,β-CROWN process during the instance
    peak_gpu_mib: float | None = None    # CUDA allocator peak, on a GPU
    solve_s: float | None = None         # wall time of the instance inside the α,β-CROWN process (no start-up)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_verdict(results_file: Path) -> str:
    """The first line of a VNN-COMP results file when it is a known verdict, else ''."""
    if not results_file.is_file():
        return ""
    lines = results_file.read_text().strip().splitlines()
    first = lines[0].strip() if lines else ""
    return first if first in RESULTS else ""


_PAIR = re.compile(r"\(\s*([XY])_(\d+)\s+([-+0-9.eEinfa]+)\s*\)")


def parse_witness(text: str):
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


class AbcrownWorker:
    """One α,β-CROWN process that verifies instances one after another (module docstring).

    Started on first use; restarted after it dies or is killed for overrunning an
    instance. ``threads``: ``OMP_NUM_THREADS`` of the process (its torch threads).
    """

    def __init__(self, inst: AbcrownInstall, threads: int = 1):
        self.inst = inst
        self.threads = threads
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
            self.proc = subprocess.Popen([str(self.inst.python), str(WORKER_SCRIPT)], cwd=self.inst.verifier_dir,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1)
        return self.proc

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, onnx: Path, vnnlib: Path, results_file: Path, timeout: float, config: Path,
            log: Path) -> tuple[str, float, str, dict[str, Any]]:
        """``(result, wall seconds, note, reply)`` for one instance; never raises for α,β-CROWN's failures."""
        results_file.unlink(missing_ok=True)
        cex = results_file.with_suffix(".cex.txt")
        args = ["--config", str(config), "--onnx_path", str(onnx), "--vnnlib_path", str(vnnlib),
                "--results_file", str(results_file), "--timeout", f"{timeout:g}", "--save_adv_example",
                "--cex_path", str(cex)]
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("$ " + " ".join([str(self.inst.script), *args]) + "\n\n")
        start = time.perf_counter()
        proc = self._start()
        try:
            proc.stdin.write(json.dumps({"args": args, "log": str(log)}) + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._kill()
            return "error", time.perf_counter() - start, "the α,β-CROWN worker died before the instance", {}
        deadline = start + timeout + STARTUP_SLACK_S
        while True:  # skip anything that is not a reply (nothing should be)
            ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.perf_counter(), 0))
            wall = time.perf_counter() - start
            if not ready:
                self._kill()
                return "timeout", wall, "killed after timeout + slack", {}
            line = proc.stdout.readline()
            if not line:
                code = proc.wait()
                self.proc = None
                return "error", wall, f"the α,β-CROWN process died (exit code {code}); see {log.name}", {}
            if line.startswith(MARK):
                reply = json.loads(line[len(MARK):])
                break
        if not reply.get("ok"):
            return "error", wall, f"α,β-CROWN raised {reply.get('error')}", reply
        verdict = read_verdict(results_file)
        if not verdict or verdict == "error":
            return "error", wall, f"no result in {results_file.name}", reply
        return verdict, wall, "", reply


_WORKERS: dict[tuple[str, str, int], AbcrownWorker] = {}


def _worker(inst: AbcrownInstall, threads: int) -> AbcrownWorker:
    """This process's α,β-CROWN worker for ``inst`` (kept across tasks, closed at exit)."""
    key = (str(inst.home), str(inst.python), threads)
    if key not in _WORKERS:
        if not _WORKERS:
            atexit.register(close_workers)
        _WORKERS[key] = AbcrownWorker(inst, threads)
    return _WORKERS[key]


def close_workers() -> None:
    """Stop this process's α,β-CROWN workers (at exit; benchmarks call it to measure cold starts)."""
    for worker in _WORKERS.values():
        worker.close()


def _abcrown_time(log: Path) -> float | None:
    """The last ``Time: S`` α,β-CROWN printed in ``log`` (its own timing of the instance)."""
    if not log.is_file():
        return None
    found = re.findall(r"^Time:\s*([0-9.eE+-]+)\s*$", log.read_text(errors="replace"), re.MULTILINE)
    return float(found[-1]) if found else None


def verify_instance(index: int, onnx: str, vnnlib: str, timeout: float, folder: str, out: str,
                    config: str, threads: int | None = None) -> dict[str, Any]:
    """Executor task: α,β-CROWN on instance ``index`` of benchmark ``folder``; the :class:`InstanceResult` as a dict.

    ``onnx``/``vnnlib`` are relative to ``folder``; logs and results files go under
    ``out`` (``logs/``, ``results/``, ``work/``). α,β-CROWN writes a compiled cache next
    to the vnnlib it reads, so it reads a private copy.
    """
    folder_p, out_p = Path(folder), Path(out)
    onnx_path, vnn_src = folder_p / onnx, folder_p / vnnlib
    log = out_p / "logs" / f"{index:04d}.log"
    if not onnx_path.is_file() or not vnn_src.is_file():
        return InstanceResult(index, onnx, vnnlib, timeout, "error", 0.0, "", str(log),
                              "onnx or vnnlib file missing").as_dict()
    work = out_p / "work"
    work.mkdir(parents=True, exist_ok=True)
    vnn_copy = work / f"{index:04d}_{vnn_src.name}"
    shutil.copyfile(vnn_src, vnn_copy)
    res_file = out_p / "results" / f"{index:04d}.txt"
    res_file.parent.mkdir(parents=True, exist_ok=True)
    threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
    worker = _worker(require_abcrown(), threads)
    result, wall, note, reply = worker.run(onnx_path.resolve(), vnn_copy.resolve(), res_file.resolve(), timeout,
                                           Path(config).resolve(), log.resolve())
    checked = ""
    if result == "sat":
        witness = "\n".join(res_file.read_text().splitlines()[1:])
        why = check_witness(onnx_path, vnn_src, witness)
        checked = "rejected" if why else "yes"
        if why:
            result, note = "error", f"sat witness rejected: {why}"
    return InstanceResult(index, onnx, vnnlib, timeout, result, wall, checked, str(log), note, _abcrown_time(log),
                          reply.get("peak_rss_mib"), reply.get("peak_gpu_mib"), reply.get("seconds")).as_dict()
