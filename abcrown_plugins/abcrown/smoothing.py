"""α,β-CROWN hook: certify each VNN-COMP instance with randomized smoothing (L2).

Use in an α,β-CROWN config (csv mode with 3-column ``instances.csv`` rows;
α,β-CROWN passes ``onnx_path`` only there)::

    general:
      complete_verifier: Customized("abcrown_plugins.abcrown.smoothing", "certify_instance",
                                    radius=0.25, sigma=0.25, n0=100, n=10000, alpha=0.001)

α,β-CROWN calls ``certify_instance(model, vnnlib, onnx_path)`` per instance
with the keyword arguments of the config bound. For every input box of the
VNNLIB property the hook takes the box centre as the input, reads the label
from the specification (the class every OR-term compares the others against,
``Y_label - Y_j <= 0``), runs :func:`abcrown_plugins.smoothing.certify`, and
returns ``"safe"`` only when the smoothed classifier's prediction is the label
and its certified L2 radius is at least ``radius``; otherwise ``"unknown"``.
The certificate is about the *smoothed* classifier of the network and holds
with probability at least ``1 - alpha`` over the sampling noise; each instance
logs that. The VNNLIB box is L-inf and gives only the centre; the L2 radius is
the hook's ``radius`` argument, in the network's input units ([0,1] pixels
when normalisation is inside the network).

The network is α,β-CROWN's loaded model, or the project checkpoint named by
``checkpoint`` (then its input shape and normalisation come with it).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from abcrown_plugins.models import load_model
from abcrown_plugins.smoothing import ABSTAIN, certify, check_settings

__all__ = ["certify_instance", "label_from_spec"]


def label_from_spec(spec: Sequence[tuple[Any, Any]]) -> int:
    """The label of a local-robustness property: each OR-term row is ``Y_label - Y_j <= 0``.

    ``spec`` is α,β-CROWN's list of ``(mat, rhs)`` (``mat @ y <= rhs``). Raises
    ``ValueError`` unless every row has exactly one +1 (the label, the same in
    every row) and one -1 coefficient with ``rhs == 0``.
    """
    labels = set()
    others = set()
    for mat, rhs in spec:
        mat = np.atleast_2d(np.asarray(mat, dtype=np.float64))
        rhs = np.atleast_1d(np.asarray(rhs, dtype=np.float64))
        if mat.shape[0] != rhs.shape[0]:
            raise ValueError(f"spec term has {mat.shape[0]} rows but {rhs.shape[0]} right-hand sides")
        for row, b in zip(mat, rhs):
            pos, neg = np.flatnonzero(row > 0), np.flatnonzero(row < 0)
            if b != 0 or len(pos) != 1 or len(neg) != 1 or row[pos[0]] != 1 or row[neg[0]] != -1:
                raise ValueError("the property is not local robustness (rows Y_label - Y_j <= 0 expected)")
            labels.add(int(pos[0]))
            others.add(int(neg[0]))
    if len(labels) != 1 or labels & others:
        raise ValueError(f"the OR-terms do not share one label (positive classes {sorted(labels)})")
    return labels.pop()


def _network(model: nn.Module | None, checkpoint: str | None, input_shape) -> tuple[nn.Module, tuple[int, ...]]:
    if checkpoint:
        loaded = load_model(checkpoint)
        return loaded.model, loaded.meta.input_shape
    if model is None:
        raise ValueError("no network: α,β-CROWN passed none and no checkpoint= was given")
    if input_shape is None:
        raise ValueError("input_shape=[C, H, W] is needed when the hook uses α,β-CROWN's model (no checkpoint=)")
    return model, tuple(int(s) for s in input_shape)


def certify_instance(model: nn.Module | None, vnnlib: Sequence, onnx_path: str | None = None, *, radius: float,
                     sigma: float = 0.25, n0: int = 100, n: int = 100000, alpha: float = 0.001,
                     batch_size: int = 1000, seed: int = 0, checkpoint: str | None = None,
                     input_shape: Sequence[int] | None = None, device: str = "cpu",
                     log: Callable[[str], None] = print) -> str:
    """``"safe"`` if every input box's centre is certified at L2 ``radius`` for the spec's label, else ``"unknown"``.

    ``vnnlib``: α,β-CROWN's list of ``(box, [(mat, rhs), ...])``, ``box`` one
    ``[lo, hi]`` per flattened input (NCHW order). The noise of each instance is
    seeded by ``seed`` and the centre's bytes, so a rerun gives the same answer.
    """
    try:
        net, shape = _network(model, checkpoint, input_shape)
    except Exception as e:  # noqa: BLE001 - a missing/bad checkpoint (UserError) or shape: report, do not crash
        log(f"randomized smoothing hook: unknown ({e})")
        return "unknown"
    check_settings(sigma, alpha, n, n0, batch_size)  # a bad setting is a config error: fail loudly
    dev = torch.device(device)
    net = net.to(dev).eval()
    verdicts = []
    for box, spec in vnnlib:
        box = np.asarray(box, dtype=np.float64).reshape(-1, 2)
        try:
            label = label_from_spec(spec)
        except ValueError as e:
            log(f"randomized smoothing hook: unknown ({e})")
            return "unknown"
        if box.shape[0] != int(np.prod(shape)):
            log(f"randomized smoothing hook: unknown (the box has {box.shape[0]} inputs, the network "
                f"takes {list(shape)})")
            return "unknown"
        center = torch.tensor((box[:, 0] + box[:, 1]) / 2, dtype=torch.float32).view(shape)
        num_classes = int(np.atleast_2d(np.asarray(spec[0][0])).shape[1])
        gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + zlib.crc32(center.numpy().tobytes()))
        with torch.no_grad():
            res = certify(net, center.to(dev), n0, n, alpha, sigma, num_classes, batch_size, gen)
        ok = res.prediction != ABSTAIN and res.prediction == label and res.radius >= radius
        verdicts.append(ok)
        log(f"randomized smoothing (Cohen et al. 2019): label {label}, smoothed prediction "
            f"{'abstain' if res.prediction == ABSTAIN else res.prediction}, certified L2 radius {res.radius:.4f} "
            f"(requested {radius:g}), pA_lower {res.pA_lower:.4f}, sigma {sigma:g}, n0 {n0}, n {n}: "
            f"{'safe' if ok else 'unknown'}; the certificate is for the smoothed classifier and holds with "
            f"probability >= 1 - alpha = {1 - alpha:g}")
    return "safe" if verdicts and all(verdicts) else "unknown"
