"""Masks: which weights of which layers are kept.

A :class:`Mask` maps a parameter name (``"1.weight"``) to a bool tensor of the
same shape, True = kept. Masks are applied by zeroing weights in place after
every optimiser step, so the model's ``state_dict`` stays plain and dense
("folded": no ``weight_orig``/``weight_mask`` keys) and loads anywhere.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

SCOPES = {
    "conv": (nn.Conv2d,),
    "conv+linear": (nn.Conv2d, nn.Linear),
}


def prunable_parameters(model: nn.Module, scope: str = "conv") -> dict[str, Tensor]:
    """``{name: weight}`` of the layers in ``scope``; the final classifier is never pruned."""
    types = SCOPES[scope]
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, types)]
    if scope != "conv" and layers and isinstance(layers[-1][1], nn.Linear):
        layers = layers[:-1]
    return {f"{name}.weight": m.weight for name, m in layers}


class Mask:
    """A validated mask over named weights (0/1, shapes match the model's)."""

    def __init__(self, masks: Mapping[str, Tensor]):
        self._m = {k: v.detach().to(torch.bool).clone() for k, v in masks.items()}

    @classmethod
    def ones_like(cls, model: nn.Module, scope: str = "conv") -> "Mask":
        return cls({k: torch.ones_like(w, dtype=torch.bool) for k, w in prunable_parameters(model, scope).items()})

    def validate(self, model: nn.Module) -> None:
        """Raise ValueError unless every key names a parameter of the same shape."""
        params = dict(model.named_parameters())
        for k, v in self._m.items():
            if k not in params:
                raise ValueError(f"mask key '{k}' is not a parameter of the model")
            if params[k].shape != v.shape:
                raise ValueError(f"mask '{k}' has shape {tuple(v.shape)}, parameter has {tuple(params[k].shape)}")

    def __getitem__(self, key: str) -> Tensor:
        return self._m[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._m)

    def __len__(self) -> int:
        return len(self._m)

    def items(self):
        return self._m.items()

    def to_dict(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self._m.items()}

    @property
    def kept(self) -> int:
        return int(sum(int(v.sum()) for v in self._m.values()))

    @property
    def total(self) -> int:
        return int(sum(v.numel() for v in self._m.values()))

    def density(self) -> float:
        """Fraction of maskable weights kept."""
        return self.kept / max(self.total, 1)

    def is_subset_of(self, other: "Mask") -> bool:
        """True if this mask keeps nothing that ``other`` removed (masks only shrink)."""
        return set(self._m) == set(other._m) and all(not bool((v & ~other._m[k]).any()) for k, v in self._m.items())

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> None:
        """Zero the masked-out weights of ``model`` in place."""
        params = dict(model.named_parameters())
        for k, v in self._m.items():
            params[k].mul_(v.to(params[k].device, params[k].dtype))


@torch.no_grad()
def rewind_(model: nn.Module, init_state: Mapping[str, Tensor], mask: Mask) -> None:
    """Weight rewinding: restore ``init_state`` exactly, then zero what ``mask`` removed."""
    model.load_state_dict(init_state)
    mask.apply_(model)
