"""HYDRA (Sehwag et al. 2020): importance scores learned on the training objective.

Every prunable weight ``w`` gets a score ``s`` (initialised to ``|w|``, so zero score
epochs reproduce magnitude pruning). In the forward pass the layer uses
``w * m`` where ``m`` is the hard top-k mask of the scores (the same selection rule the
strategy applies afterwards, global or layerwise, among the still-kept weights), with a
straight-through gradient ``dL/ds = dL/dm``. Weights are frozen; only the scores are
optimised (SGD, momentum 0.9, ``ctx.score_lr``) for ``ctx.score_epochs`` epochs on the
training objective (adversarial, certified or clean, as the run trains; the seed adapts
HYDRA's adversarial loss to the certified loss under certified training). The kept
weights are then finetuned (or rewound) by the next round's training.

The model passed in is never changed: the optimisation runs on a copy whose
weights are reparametrised with :mod:`torch.nn.utils.parametrize`.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from abcrown_plugins.pruning.context import PruneContext
from abcrown_plugins.pruning.mask import Mask
from abcrown_plugins.pruning.strategies import prune_unstructured
from abcrown_plugins.runtime import progress


class _Selector:
    """Holds the scores and, per step, the hard masks of the top-k selection."""

    def __init__(self, scores: dict[str, nn.Parameter], mask: Mask, rate: float, strategy: str):
        self.scores, self.mask, self.rate, self.strategy = scores, mask, rate, strategy
        self.hard: dict[str, Tensor] = {}

    @torch.no_grad()
    def select(self) -> None:
        new = prune_unstructured({k: s.detach() for k, s in self.scores.items()}, self.mask, self.rate, self.strategy)
        self.hard = {k: new[k].to(self.scores[k].device, self.scores[k].dtype) for k in self.scores}


class _ScoreMask(nn.Module):
    """Parametrisation ``w -> w * (m + s - s.detach())``: value ``w * m``, gradient to ``s``."""

    def __init__(self, selector: _Selector, key: str):
        super().__init__()
        self.selector, self.key = selector, key

    def forward(self, w: Tensor) -> Tensor:
        s = self.selector.scores[self.key]
        return w * (self.selector.hard[self.key] + s - s.detach())


def hydra_scores(model: nn.Module, mask: Mask, ctx: PruneContext) -> dict[str, Tensor]:
    """Learned scores ``{param name: tensor}`` (shapes of ``mask``), higher = keep."""
    work = copy.deepcopy(model).to(ctx.device)
    for p in work.parameters():
        p.requires_grad_(False)
    params = dict(work.named_parameters())
    modules = dict(work.named_modules())
    scores = {k: nn.Parameter(params[k].detach().abs().clone()) for k in mask}
    selector = _Selector(scores, mask, ctx.rate, ctx.strategy)
    for k in mask:
        module_name, _, attr = k.rpartition(".")
        parametrize.register_parametrization(modules[module_name], attr, _ScoreMask(selector, k), unsafe=True)
    opt = torch.optim.SGD(list(scores.values()), lr=ctx.score_lr, momentum=0.9)
    work.train()
    steps = ctx.train_set.num_batches(ctx.batch_size) if ctx.train_set is not None else 0
    for epoch in range(ctx.score_epochs):
        bar = progress(ctx.batches(salt=41 + epoch), desc=f"hydra scores {epoch + 1}/{ctx.score_epochs}",
                       total=steps)
        for x, y in bar:
            selector.select()
            loss = ctx.objective(work, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {k: s.detach().cpu() for k, s in scores.items()}
