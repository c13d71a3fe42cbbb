"""Complete verification of a network on test images by α,β-CROWN, with the project's cross-checks.

:func:`abcrown_verify` exports the network to ONNX, writes one local-robustness
VNNLIB property per test image (the first ``n`` of the split, L-inf radius
``eps`` clipped to [0,1]) and verifies them on the executor (one task per
image, :func:`~abcrown_plugins.abcrown.runner.verify_instance`). Accounting
follows seed 001: an image the network misclassifies counts as not verified
(and is not sent to α,β-CROWN), so ``verified_acc = safe / n``.

Cross-checks on every image:

* a ``sat`` (unsafe) witness is re-run in onnxruntime; one that does not
  violate the property makes the row ``error``;
* an image that IBP verifies (sound, so α,β-CROWN must not find it unsafe and
  should verify it) but α,β-CROWN does not is an ``error`` row, a soundness
  alarm; α,β-CROWN's own verdict stays in ``abcrown_result``;
* a crash of α,β-CROWN is ``error``, never ``timeout`` or ``unknown``.

Results per image are kept under ``out/instances/NET`` (NET: a digest of the
ONNX file), so a killed run resumes without verifying an image twice and never
reuses results of another network.

Output: ``out/net.onnx``, ``out/vnnlib/``, ``out/logs/``, and the rows
(:data:`COLUMNS`) for ``abcrown.csv``.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from abcrown_plugins.abcrown.abcrown_env import require_abcrown
from abcrown_plugins.abcrown.vnncomp import instance_tasks, outcome_rows, write_instance_config
from abcrown_plugins.bounds import margin_lower_bounds
from abcrown_plugins.executor import ExecutorSettings, run_tasks
from abcrown_plugins.export.onnx_io import export_onnx, onnx_session, run_onnx
from abcrown_plugins.export.vnnlib import write_robustness_vnnlib
from abcrown_plugins.report import write_csv

__all__ = ["COLUMNS", "VERDICTS", "AbcrownSummary", "abcrown_verify"]

#: Final verdict words of an image (``misclassified`` images are never sent to α,β-CROWN).
VERDICTS = ("safe", "unsafe", "timeout", "unknown", "error", "misclassified")
_WORD = {"unsat": "safe", "sat": "unsafe", "timeout": "timeout", "unknown": "unknown", "error": "error"}

COLUMNS = ["idx", "label", "prediction", "ibp_verified", "result", "abcrown_result", "time_s", "abcrown_time_s",
           "peak_rss_mib", "peak_gpu_mib", "witness_checked", "note", "log"]


@dataclass(frozen=True)
class AbcrownSummary:
    """Counts and costs of one :func:`abcrown_verify` run (times in seconds, memory in MiB)."""

    n: int
    verified_acc: float
    safe: int
    unsafe: int
    timeout: int
    unknown: int
    error: int
    misclassified: int
    time_mean_s: float | None
    time_max_s: float | None
    peak_mem_mib: float | None
    mem_how: str

    def columns(self) -> dict[str, Any]:
        """The summary as ``abcrown_*`` columns of a results row."""
        return {f"abcrown_{k}": v for k, v in asdict(self).items() if k != "n"}


@torch.no_grad()
def _ibp_verified(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int) -> list[bool]:
    device = next(model.parameters()).device
    lower = margin_lower_bounds(model.eval(), x.to(device), y.to(device), eps, num_classes).lower
    return (lower.view(len(y), -1) > 0).all(dim=1).cpu().tolist()


def _summarise(rows: list[dict[str, Any]]) -> AbcrownSummary:
    counts = {v: sum(r["result"] == v for r in rows) for v in VERDICTS}
    times = [r["time_s"] for r in rows if r["result"] != "misclassified" and r["time_s"] is not None]
    gpu = [r["peak_gpu_mib"] for r in rows if r.get("peak_gpu_mib") is not None]
    rss = [r["peak_rss_mib"] for r in rows if r.get("peak_rss_mib") is not None]
    n = len(rows)
    return AbcrownSummary(
        n=n, verified_acc=counts["safe"] / n if n else 0.0, **counts,
        time_mean_s=statistics.fmean(times) if times else None, time_max_s=max(times) if times else None,
        peak_mem_mib=max(gpu) if gpu else (max(rss) if rss else None),
        mem_how="cuda_max_allocated" if gpu else ("process_peak_rss" if rss else ""))


def abcrown_verify(model: nn.Module, dataset, eps: float, n: int | None, timeout: float, out: str | Path,
                   abcrown_config: str | Path | None = None, executor: ExecutorSettings | None = None,
                   ibp_model: nn.Module | None = None, desc: str = "α,β-CROWN") -> tuple[list[dict], AbcrownSummary]:
    """Verify the first ``n`` images of ``dataset`` (all with None) at ``eps``; returns the rows and the summary.

    ``model``: the network α,β-CROWN verifies (e.g. compacted); ``ibp_model``: the
    one IBP cross-checks (default ``model``; they compute the same function).
    """
    require_abcrown()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    shape = tuple(dataset.info.shape)
    num_classes = dataset.info.num_classes
    count = len(dataset) if n is None else min(n, len(dataset))
    export_onnx(model, out / "net.onnx", shape)
    net = hashlib.sha256((out / "net.onnx").read_bytes()).hexdigest()[:12]
    session = onnx_session(out / "net.onnx")
    xs = torch.stack([dataset[i][0] for i in range(count)]) if count else torch.zeros(0, *shape)
    ys = torch.tensor([int(dataset[i][1]) for i in range(count)], dtype=torch.long)
    ibp = _ibp_verified(ibp_model if ibp_model is not None else model, xs, ys, eps, num_classes) if count else []
    rows: list[dict[str, Any]] = []
    instances: list[tuple[str, str, float]] = []
    positions: list[int] = []
    for i in range(count):
        pred = int(np.argmax(run_onnx(session, xs[i:i + 1].numpy())))
        row = {"idx": i, "label": int(ys[i]), "prediction": pred, "ibp_verified": bool(ibp[i]),
               "result": "misclassified", "abcrown_result": "", "time_s": None, "abcrown_time_s": None,
               "peak_rss_mib": None, "peak_gpu_mib": None, "witness_checked": "", "note": "", "log": ""}
        rows.append(row)
        if pred != int(ys[i]):
            continue
        name = f"vnnlib/img{i:05d}.vnnlib"
        write_robustness_vnnlib(out / name, xs[i], int(ys[i]), eps, num_classes,
                                comment=f"{dataset.info.name} test image {i}, eps {eps:.6g}")
        instances.append(("net.onnx", name, float(timeout)))
        positions.append(i)
    config = write_instance_config(out / "abcrown_instance.yaml", abcrown_config)
    results_dir = out / "instances" / net
    outcomes = run_tasks(instance_tasks(instances, out, out, config, executor), results_dir, executor, desc=desc)
    for i, res in zip(positions, outcome_rows(outcomes, instances, out)):
        row = rows[i]
        row.update({"abcrown_result": res.result, "result": _WORD[res.result],
                    "time_s": res.solve_s if res.solve_s is not None else res.runtime_s,
                    "abcrown_time_s": res.abcrown_time_s, "peak_rss_mib": res.peak_rss_mib,
                    "peak_gpu_mib": res.peak_gpu_mib, "witness_checked": res.witness_checked, "note": res.note,
                    "log": res.log})
        if row["ibp_verified"] and row["result"] != "safe":
            row["result"] = "error"
            row["note"] = (f"soundness alarm: IBP verified this image, α,β-CROWN says {res.result}"
                           + (f" ({res.note})" if res.note else ""))
    write_csv(out.parent / f"{out.name}.csv", rows, COLUMNS)
    return rows, _summarise(rows)
