"""The model registry: ``@register_model(name)`` and ``build_model(name, ...)``.

A builder takes the input geometry and class count and returns an
``nn.Module`` mapping [0,1] pixels (N x C x H x W) to logits (N x classes).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    input_sizes: tuple[int, ...]  # spatial sizes the architecture is defined for


MODELS: dict[str, ModelEntry] = {}


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def register_model(name: str, description: str, input_sizes: Sequence[int] = (28, 32)):
    """Decorator adding a builder to :data:`MODELS`; duplicates are refused."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        MODELS[name] = ModelEntry(name, fn, description, tuple(input_sizes))
        return fn

    return wrap


def get_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UnknownModelError(f"unknown model '{name}'{hint} (valid: {', '.join(sorted(MODELS))})")
    return MODELS[name]


def build_model(name: str, *, in_channels: int = 3, input_size: int = 32, num_classes: int = 10,
                mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> nn.Module:
    """Build zoo model ``name`` for C x S x S inputs in [0,1] with per-channel normalisation."""
    entry = get_entry(name)
    if input_size not in entry.input_sizes:
        raise UnknownModelError(f"model '{name}' is defined for input sizes {entry.input_sizes}, "
                                f"not {input_size}")
    if len(mean) == 1 and in_channels > 1:
        mean, std = tuple(mean) * in_channels, tuple(std) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise UnknownModelError(f"normalisation has {len(mean)} channels, the input has {in_channels}")
    return entry.builder(in_channels=in_channels, input_size=input_size, num_classes=num_classes,
                         mean=tuple(mean), std=tuple(std))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
