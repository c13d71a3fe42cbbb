"""Clean accuracy, verified accuracy and stability of a model on a data set.

An example counts as verified at L-inf radius ``eps`` when the lower bound of
every margin ``f_label - f_j`` over the clipped eps-ball is positive, and it
is only counted if also correctly classified (a verified example is always
clean-correct for sound bounds; the check guards against a broken bound). A network
whose logits are NaN or infinite is refused (UserError), not counted.
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
from abcrown_plugins.verification.memory import PeakMemory


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

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, eps: float, method: str = "ibp", batch_size: int = 256,
             num_examples: int | None = None, device: torch.device | str = "cpu",
             desc: str = "verify") -> EvalResult:
    """Evaluate ``model`` (set to eval mode) on the first ``num_examples`` of ``dataset``."""
    model.eval()
    data = dataset.subset(num_examples) if num_examples else dataset
    num_classes = dataset.info.num_classes
    with PeakMemory(device) as pm:
        start = time.perf_counter()
        res = _evaluate(model, data, eps, method, batch_size, device, desc, num_classes)
        elapsed = time.perf_counter() - start
    return EvalResult(**res, time_s=elapsed, peak_mem_mib=pm.mib, peak_mem_how=pm.how)


def _evaluate(model, data, eps, method, batch_size, device, desc, num_classes) -> dict:
    correct = verified = verified_ibp = n = 0
    stab, stab_bn = [], []
    bounder = None
    for x, y in progress(data.batches(batch_size, device=device), desc=desc, total=data.num_batches(batch_size)):
        logits = model(x)
        require_finite({"logits": logits}, "the network's output on the test images",
                       "a NaN/inf network has no accuracy to verify: check its weights")
        pred = logits.argmax(1)
        ok = pred == y
        spec = margin_spec(y, num_classes)
        lower, upper = input_box(x, eps)
        ibp = interval_propagate(model, lower, upper, spec=spec, record=True)
        margins = ibp.lower
        if method == "crown":
            if bounder is None:
                bounder = LirpaBounder(model, x)
            margins, _ = bounder.bounds(lower, upper, "crown", spec)
            margins = torch.maximum(margins, ibp.lower)  # both are sound: take the tighter
        elif method != "ibp":
            raise ValueError(f"unknown verification method '{method}'")
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
