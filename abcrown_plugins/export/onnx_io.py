"""ONNX export of zoo models, checked against torch with onnxruntime while exporting.

The exported graph takes [0,1] pixels (normalisation inside, a 1x1 convolution),
has BatchNorm in eval form (folded into the convolutions by constant folding), a
fixed batch of 1 and opset >= 13; every constant tensor is an initializer (the
converters α,β-CROWN uses read convolution weights from initializers only). ``export_onnx`` refuses to leave a file behind unless
``onnx.checker`` passes and onnxruntime's logits equal torch's on random inputs
(:func:`abcrown_plugins.numerics.compare_logits`: finite, within
``atol + rtol * max|logit|``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from abcrown_plugins.fileio import new_file_mode
from abcrown_plugins.numerics import LOGITS_ATOL, LOGITS_RTOL, compare_logits

OPSET = 17


def onnx_session(path: str | Path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(session, x: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return session.run(None, {name: x.astype(np.float32)})[0]


def constants_to_initializers(graph) -> int:
    """Turn every ``Constant`` node holding a tensor into an initializer of the same name; returns how many."""
    keep, moved = [], 0
    for node in graph.node:
        attrs = list(node.attribute)
        if node.op_type == "Constant" and len(attrs) == 1 and attrs[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attrs[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return moved


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...], atol: float = LOGITS_ATOL,
                rtol: float = LOGITS_RTOL, checks: int = 8, seed: int = 0) -> float:
    """Export ``model`` (eval) for inputs of ``input_shape`` (C,H,W); returns the max |onnx - torch| seen.

    The file gets the permissions the umask gives a new file. Raises (and writes
    nothing) if the checker fails, or UserError if the logits of ``checks`` random
    inputs are not finite or differ by more than ``atol + rtol * max|torch logit|``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    example = torch.zeros(1, *input_shape)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), tmp, opset_version=OPSET, dynamo=False, do_constant_folding=True,
                              input_names=["input"], output_names=["output"])
        proto = onnx.load(tmp)
        constants_to_initializers(proto.graph)
        onnx.save(proto, tmp)
        onnx.checker.check_model(proto, full_check=True)
        session = onnx_session(tmp)
        gen = torch.Generator().manual_seed(seed)
        refs, gots = [], []
        with torch.no_grad():
            for _ in range(checks):
                x = torch.rand(1, *input_shape, generator=gen)
                refs.append(model(x).numpy())
                gots.append(run_onnx(session, x.numpy()))
        worst = compare_logits(np.concatenate(refs), np.concatenate(gots),
                               f"ONNX export '{path.name}' (onnxruntime vs torch)", atol, rtol)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
        return worst
    finally:
        Path(tmp).unlink(missing_ok=True)
