"""Hooks for α,β-CROWN's ``Customized("abcrown_plugins.abcrown.hooks", NAME, key=value, ...)``.

``model.name: Customized("abcrown_plugins.abcrown.hooks", "zoo_model", checkpoint="zoo:FILE.pt")``
    returns the checkpoint's zoo model with its folded weights (compacted when
    channel-pruned). Leave ``model.path`` unset: the hook loads the weights.

``model.name: Customized("abcrown_plugins.abcrown.hooks", "imported_model", arch="onnx:NET.onnx", dataset="npy:DIR")``
    returns a network the user brought (``onnx:PATH``, or ``python:MODULE:FUNCTION``
    with ``checkpoint=`` its state_dict) as the project imports it: the data set's
    normalisation (``mean=``/``std=``, default the data set's) folded in front, so it
    takes [0,1] pixels like every other model here.

``data.dataset: Customized("abcrown_plugins.abcrown.hooks", "zoo_data", dataset="synthetic")``
    returns ``(X, labels, data_max, data_min, eps)`` for our data sets: X in
    [0,1] pixels (N,C,H,W); the model normalises inside, so the data range is
    [0,1] and eps is ``specification.epsilon`` in pixel units. Keep
    ``data.mean``/``data.std`` at α,β-CROWN's defaults.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from abcrown_plugins.data import dataset_info, load_dataset
from abcrown_plugins.errors import UserError
from abcrown_plugins.models import load_model


def zoo_model(checkpoint: str, compact: bool = True) -> nn.Module:
    """The model of ``checkpoint`` (``zoo:NAME`` or a path), eval mode, weights loaded."""
    return load_model(checkpoint, compact=compact).model


def imported_model(arch: str, dataset: str, checkpoint: str | None = None, mean: list[float] | None = None,
                   std: list[float] | None = None) -> nn.Module:
    """The imported network ``arch`` (``onnx:PATH`` / ``python:MODULE:FUNCTION``) for ``dataset``'s inputs."""
    from abcrown_plugins.models.imported import import_network

    info = dataset_info(dataset)
    return import_network(arch, checkpoint, tuple(info.shape), mean if mean is not None else info.mean,
                          std if std is not None else info.std, info.num_classes).model


def _abcrown_config() -> dict[str, Any] | None:
    """α,β-CROWN's global config when running inside it, else None."""
    try:
        import arguments  # α,β-CROWN's module, on sys.path only inside abcrown.py
    except ImportError:
        return None
    cfg = getattr(arguments, "Config", None)
    return cfg if cfg is not None and hasattr(cfg, "__getitem__") else None


def validate_against_abcrown(num_classes: int, shape: tuple[int, ...], cfg: dict[str, Any] | None) -> None:
    """Check α,β-CROWN's data settings agree with our data set; UserError naming the key otherwise."""
    if cfg is None:
        return
    data = cfg["data"]
    if int(data.get("num_outputs", num_classes)) != num_classes:
        raise UserError(f"data.num_outputs is {data.get('num_outputs')} but the data set has {num_classes} classes; "
                        f"set data.num_outputs: {num_classes}")
    mean, std = data.get("mean", 0.0), data.get("std", 1.0)
    flat_mean = mean if isinstance(mean, (list, tuple)) else [mean]
    flat_std = std if isinstance(std, (list, tuple)) else [std]
    if any(float(m) != 0.0 for m in flat_mean) or any(float(s) != 1.0 for s in flat_std):
        raise UserError("normalisation is the first layer of abcrown_plugins models; leave data.mean/data.std unset "
                        f"(got mean={mean}, std={std})")


def zoo_data(spec: dict[str, Any], dataset: str = "synthetic", split: str = "test", num: int | None = None,
             root: str | None = None, seed: int = 0, eps: float | None = None):
    """α,β-CROWN data hook: ``(X, labels, data_max, data_min, eps)`` in the model's input space ([0,1])."""
    info = dataset_info(dataset)
    shape = (info.channels, info.size, info.size)
    validate_against_abcrown(info.num_classes, shape, _abcrown_config())
    norm = spec.get("norm", float("inf"))
    if float(norm) != float("inf"):
        raise UserError(f"zoo_data gives L-inf boxes; specification.norm is {norm}")
    radius = eps if eps is not None else spec.get("epsilon")
    if radius is None:
        raise UserError("set specification.epsilon (pixel units, e.g. 0.00784313725490196 for 2/255) "
                        "or pass eps= to zoo_data")
    ds = load_dataset(dataset, split, root, num, seed=seed)
    x = ds.pixels()
    if tuple(x.shape[1:]) != shape:
        raise UserError(f"data set '{dataset}' gives images of shape {tuple(x.shape[1:])}, expected {shape}")
    ones = torch.ones(1, *shape)
    return x, ds.labels.clone(), ones, torch.zeros_like(ones), torch.full((1, shape[0], 1, 1), float(radius))
