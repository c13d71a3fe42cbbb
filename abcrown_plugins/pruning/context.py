"""What a pruning step may read besides the model and the mask."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

Objective = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``objective(model, x, y) -> scalar loss``: the training objective at the full radius."""


@dataclass(frozen=True)
class PruneContext:
    """Settings and data of one pruning step (see :func:`abcrown_plugins.pruning.prune`).

    ``rate``: fraction of the still-kept weights to remove (unstructured methods);
    ``channel_rate``: fraction of the still-kept channels (channel methods);
    ``strategy``: ``global`` or ``layerwise`` ranking of weights (or channels);
    ``train_set``/``objective``: data and loss for data-driven criteria (snip, taylor,
    hydra); ``init_state``: the rewind point (snip scores the weights the subnetwork
    restarts from); ``round`` and ``seed`` make random choices reproducible: every
    random number of a step comes from :meth:`generator` or, for objectives that draw
    from torch's global generator (FGSM's random start, GradAlign's noise), from the
    global generator reseeded by :meth:`seeded_global_rng`.
    """

    rate: float = 0.2
    channel_rate: float = 0.11
    strategy: str = "global"
    round: int = 1
    seed: int = 0
    train_set: Any = None
    batch_size: int = 128
    objective: Objective | None = None
    init_state: Mapping[str, Tensor] | None = None
    saliency_batches: int = 4
    score_epochs: int = 1
    score_lr: float = 0.1
    device: torch.device | str = "cpu"

    def step_seed(self, salt: int = 0) -> int:
        """The seed of this step's random choices: a function of (seed, round, salt) only."""
        return self.seed * 1000003 + self.round * 7919 + salt

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from (seed, round, salt)."""
        return torch.Generator().manual_seed(self.step_seed(salt))

    @contextmanager
    def seeded_global_rng(self, salt: int = 0) -> Iterator[None]:
        """Inside the block torch's global generators (CPU, and the step's CUDA device) start from
        ``step_seed(salt)``; after it they are back where they were, so a step neither depends on
        nor changes what ran before it (a resumed run draws the same numbers)."""
        device = torch.device(self.device)
        devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.step_seed(salt))
            yield

    def batches(self, n: int | None = None, salt: int = 0):
        """Up to ``n`` training batches (all with None) in an order fixed by (seed, round, salt)."""
        if self.train_set is None or self.objective is None:
            raise ValueError("this pruning criterion needs training data and an objective in the PruneContext")
        it = self.train_set.batches(self.batch_size, shuffle=True, seed=self.step_seed(salt), device=self.device)
        for i, batch in enumerate(it):
            if n is not None and i >= n:
                return
            yield batch
