"""PGD (Madry et al. 2018), L-inf, on [0,1] pixels, with re-checked counterexamples.

An example counts as broken only when the attack's point is re-checked: it lies in
the eps-ball of ``x`` clipped to [0,1] and the model misclassifies it. PGD accuracy
is therefore an upper bound of robust accuracy (an attack may miss), while verified
accuracy is a lower bound; for sound verification ``verified <= pgd <= clean``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from abcrown_plugins.runtime import progress


def pgd_attack(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 10, alpha: float | None = None,
               restarts: int = 1, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Run PGD; returns ``(x_adv, broken)``.

    ``x_adv`` (N x ...) is the last point of the first restart that broke each example
    (else of the last restart); ``broken`` (N, bool) marks examples whose ``x_adv`` is
    re-checked: inside ``[max(x - eps, 0), min(x + eps, 1)]`` and misclassified.
    ``alpha`` defaults to ``eps / 4``. The model's mode is left as is (use eval).
    """
    alpha = eps / 4 if alpha is None else alpha
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    best = x.clone()
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(max(restarts, 1)):
        u = torch.rand(x.shape, generator=generator, device="cpu" if generator is not None else x.device)
        adv = torch.minimum(torch.maximum(x + (u.to(x.device) * 2 - 1) * eps, lower), upper)
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), y)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = torch.minimum(torch.maximum(adv.detach() + alpha * grad.sign(), lower), upper)
        with torch.no_grad():
            ok = _recheck(model, adv, x, y, eps)
        take = ok & ~broken
        best[take] = adv[take]
        best[~broken & ~ok] = adv[~broken & ~ok]
        broken |= ok
        if bool(broken.all()):
            break
    return best.detach(), broken


@torch.no_grad()
def _recheck(model: nn.Module, adv: Tensor, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Per example: ``adv`` in the clipped eps-ball of ``x`` and misclassified."""
    inside = ((adv >= (x - eps).clamp(0, 1)) & (adv <= (x + eps).clamp(0, 1))).flatten(1).all(1)
    return inside & (model(adv).argmax(1) != y)


@dataclass(frozen=True)
class PGDResult:
    n: int
    eps: float
    steps: int
    restarts: int
    pgd_acc: float        # fraction correct and not broken by a re-checked PGD point
    std_acc: float
    time_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def pgd_accuracy(model: nn.Module, dataset, eps: float, steps: int = 10, alpha: float | None = None,
                 restarts: int = 1, batch_size: int = 256, num_examples: int | None = None,
                 device: torch.device | str = "cpu", seed: int = 0, desc: str = "pgd") -> PGDResult:
    """PGD accuracy of ``model`` (set to eval mode) on the first ``num_examples`` of ``dataset``.

    Deterministic for a given ``seed`` (the random starts come from a seeded generator).
    """
    model.eval()
    data = dataset.subset(num_examples) if num_examples else dataset
    gen = torch.Generator().manual_seed(int(seed))
    start = time.perf_counter()
    robust = correct = n = 0
    for x, y in progress(data.batches(batch_size, device=device), desc=desc, total=data.num_batches(batch_size)):
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        if eps > 0 and steps > 0:
            _, broken = pgd_attack(model, x, y, eps, steps, alpha, restarts, gen)
        else:
            broken = torch.zeros_like(ok)
        correct += int(ok.sum())
        robust += int((ok & ~broken).sum())
        n += y.numel()
    return PGDResult(n=n, eps=eps, steps=steps, restarts=restarts, pgd_acc=robust / max(n, 1),
                     std_acc=correct / max(n, 1), time_s=time.perf_counter() - start)
