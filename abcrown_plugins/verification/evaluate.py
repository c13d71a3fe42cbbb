"""Clean accuracy, verified accuracy and stability of a model on a data set.

An example counts as verified at L-inf radius ``eps`` when the lower bound of
every margin ``f_label - f_j`` over the clipped eps-ball is positive, and it
is only counted if also correctly classified (a verified example is always
clean-correct for sound bounds; the check guards against a broken bound). A network
whose logits are NaN or infinite is refused (UserError), not counted.

Each example's bounds and verdict do not depend on the batch it is evaluated in,
so the batch size only sets the speed and the memory: ``batch_size=None``
measures it (:func:`verify_batch_size`: the fastest per image of
:data:`VERIFY_CANDIDATES` within half the free memory, cached per model, device
and thread count, :mod:`abcrown_plugins.tuning.calibrate`). The size used is
:attr:`EvalResult.batch_size`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from abcrown_plugins.bounds import (
    LirpaBounder,
    input_box,
    interval_propagate,
    margin_spec,
    pre_activation_stability,
    pre_bn_stability,
)
from abcrown_plugins.bounds.stability import merge
from abcrown_plugins.numerics import require_finite
from abcrown_plugins.runtime import progress
from abcrown_plugins.tuning import Calibration, choose_batch_size, default_budget_mib, model_digest
from abcrown_plugins.verification.memory import PeakMemory

__all__ = ["EvalResult", "VERIFY_CANDIDATES", "evaluate", "verify_batch_size"]

#: Batch sizes :func:`verify_batch_size` times (those above the number of images are dropped).
VERIFY_CANDIDATES = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class EvalResult:
    n: int
    eps: float
    method: str
    std_acc: float            # fraction in [0,1]
    verified_acc: float       # fraction in [0,1]
    instability: float        # mean per example of sum(-l*u), pre-activation, IBP
    unstable_ratio: float     # unstable ReLUs / ReLUs, pre-activation, IBP
    instability_bn: float     # the same on pre-BN-normalised bounds l/gamma, u/gamma
    unstable_ratio_bn: float
    time_s: float             # wall time of the whole evaluation
    verified_acc_ibp: float | None = None  # IBP alone (equals verified_acc when method is ibp)
    peak_mem_mib: float = 0.0  # peak memory growth during the evaluation (see memory.PeakMemory)
    peak_mem_how: str = ""     # rss_hwm (CPU, Linux), ru_maxrss (fallback) or cuda_max_allocated
    batch_size: int = 0        # images per batch: the configured value, or the measured one (module docstring)

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, eps: float, method: str = "ibp", batch_size: int | None = 256,
             num_examples: int | None = None, device: torch.device | str = "cpu",
             desc: str = "verify") -> EvalResult:
    """Evaluate ``model`` (set to eval mode) on the first ``num_examples`` of ``dataset``.

    ``batch_size`` None: measured first (:func:`verify_batch_size`, not counted in ``time_s``)."""
    if method not in ("ibp", "crown"):
        raise ValueError(f"unknown verification method '{method}'")
    model.eval()
    data = dataset.subset(num_examples) if num_examples else dataset
    num_classes = dataset.info.num_classes
    if batch_size is None:
        batch_size = verify_batch_size(model, data, eps, method, device).batch_size
    with PeakMemory(device) as pm:
        start = time.perf_counter()
        res = _evaluate(model, data, eps, method, batch_size, device, desc, num_classes)
        elapsed = time.perf_counter() - start
    return EvalResult(**res, time_s=elapsed, peak_mem_mib=pm.mib, peak_mem_how=pm.how, batch_size=batch_size)


@torch.no_grad()
def verify_batch_size(model: nn.Module, data, eps: float, method: str = "ibp",
                      device: torch.device | str = "cpu", *, cache_dir=None, reps: int = 2) -> Calibration:
    """The verification batch size measured on ``model`` (eval mode) and the first images of ``data``.

    Times one batch of :func:`evaluate`'s work (forward, IBP with the margin
    specification and the recorded pre-activation bounds, CROWN when ``method``
    is crown) at each of :data:`VERIFY_CANDIDATES` up to ``len(data)``, ``reps`` rounds (two: ~3 s
    on ``cnn_7layer`` at 1 thread, once per structure: a pruning run's masked rounds share it), with
    :func:`~abcrown_plugins.tuning.choose_batch_size` (cached per model content,
    method, input shape, device, thread count; budget: half the free memory).
    """
    device = torch.device(device)
    cands = [c for c in VERIFY_CANDIDATES if c <= len(data)] or [len(data)]
    x_all, y_all = next(iter(data.batches(max(cands), device=device)))
    num_classes = data.info.num_classes
    bounders: dict[int, object] = {}

    def run(b: int) -> None:
        _batch(model, x_all[:b], y_all[:b], eps, method, num_classes, bounders)

    key = {"model": model_digest(model, weights=False), "device": str(device), "method": method,
           "input": tuple(x_all.shape[1:]), "dtype": str(x_all.dtype)}
    return choose_batch_size(f"verify-{method}", run, cands, key=key, budget_mib=default_budget_mib(device),
                             cache_dir=cache_dir, reps=reps, device=device)


def _batch(model, x, y, eps, method, num_classes, bounders: dict) -> tuple:
    """One batch: ``(clean-correct mask, verified margins, IBP result)``; ``bounders`` keeps the CROWN bounder."""
    logits = model(x)
    require_finite({"logits": logits}, "the network's output on the test images",
                   "a NaN/inf network has no accuracy to verify: check its weights")
    ok = logits.argmax(1) == y
    spec = margin_spec(y, num_classes)
    lower, upper = input_box(x, eps)
    ibp = interval_propagate(model, lower, upper, spec=spec, record=True)
    margins = ibp.lower
    if method == "crown":
        if 0 not in bounders:
            bounders[0] = LirpaBounder(model, x)
        margins, _ = bounders[0].bounds(lower, upper, "crown", spec)
        margins = torch.maximum(margins, ibp.lower)  # both are sound: take the tighter
    return ok, margins, ibp


def _evaluate(model, data, eps, method, batch_size, device, desc, num_classes) -> dict:
    correct = verified = verified_ibp = n = 0
    stab, stab_bn = [], []
    bounders: dict = {}
    for x, y in progress(data.batches(batch_size, device=device), desc=desc, total=data.num_batches(batch_size)):
        ok, margins, ibp = _batch(model, x, y, eps, method, num_classes, bounders)
        correct += int(ok.sum())
        verified += int(((margins > 0).all(1) & ok).sum())
        verified_ibp += int(((ibp.lower > 0).all(1) & ok).sum())
        n += y.numel()
        stab.append(pre_activation_stability(ibp.relus))
        stab_bn.append(pre_bn_stability(ibp.relus))
    s, sb = merge(stab), merge(stab_bn)
    return dict(n=n, eps=eps, method=method, std_acc=correct / max(n, 1), verified_acc=verified / max(n, 1),
                instability=s.instability, unstable_ratio=s.unstable_ratio, instability_bn=sb.instability,
                unstable_ratio_bn=sb.unstable_ratio, verified_acc_ibp=verified_ibp / max(n, 1))
