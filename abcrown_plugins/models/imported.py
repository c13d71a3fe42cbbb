"""Networks the user brings: ``onnx:PATH`` and ``python:MODULE:FUNCTION`` (``model.arch``).

Both become the same thing: the network's ONNX graph, converted by
:func:`abcrown_plugins.graph.import_onnx` into an ``fx.GraphModule`` (checked
against onnxruntime), behind a :class:`model_zoo.layers.Normalize` that folds the
data set's normalisation (``data.mean``, ``data.std``) in, so the network takes
[0,1] pixels like the zoo's and its exports. A ``python:`` network is built by
calling ``FUNCTION()`` from ``MODULE`` (a dotted module name or a ``.py`` file),
loads ``model.checkpoint`` (a plain ``state_dict``, or ``{"state_dict": ...}``, also
with a one-element list inside as ERAN's files have; read with ``weights_only=True``) and is exported to ONNX once; its conversion is
checked against the user's module.

Checkpoints of an imported network keep its ONNX graph (``ModelMeta.graph``, bytes)
and where it came from (``ModelMeta.source``), so they reopen without the original
file or code: :func:`rebuild` never imports user code.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from abcrown_plugins.errors import UserError
from abcrown_plugins.graph import import_onnx
from model_zoo.layers import Normalize

__all__ = ["IMPORT_SCHEMES", "Imported", "import_network", "is_imported", "rebuild"]

#: ``model.arch`` prefixes of imported networks.
IMPORT_SCHEMES = ("onnx:", "python:")


def is_imported(arch: str) -> bool:
    return arch.startswith(IMPORT_SCHEMES)


@dataclass(frozen=True)
class Imported:
    """An imported network: the model (Normalize + graph), its ONNX bytes and where it came from."""

    model: nn.Module
    graph: bytes
    source: dict
    num_classes: int


def _wrap(graph_module: nn.Module, mean, std) -> nn.Module:
    return nn.Sequential(Normalize(mean, std), graph_module).eval()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _num_classes(model: nn.Module, shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        out = model(torch.zeros(1, *shape))
    if out.dim() != 2:
        raise UserError(f"the imported network's output has shape {tuple(out.shape)}; a classifier gives N x classes")
    return int(out.shape[1])


def import_network(arch: str, checkpoint: str | None, shape: tuple[int, int, int], mean, std,
                   num_classes: int | None = None) -> Imported:
    """Import ``model.arch`` (``onnx:PATH`` or ``python:MODULE:FUNCTION``) for inputs of ``shape`` (C, H, W).

    ``num_classes``, when given, must equal the network's number of outputs.
    """
    if arch.startswith("onnx:"):
        if checkpoint:
            raise UserError(f"model.checkpoint '{checkpoint}' is set, but an ONNX network ({arch}) carries its "
                            "own weights; remove model.checkpoint")
        path = Path(arch[len("onnx:"):])
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"model.arch {arch}: cannot read '{path}' ({e.strerror or e}); give an existing "
                            "ONNX file") from None
        graph = data
        source = {"kind": "onnx", "path": str(path.resolve()), "sha256": _sha256(data)}
    elif arch.startswith("python:"):
        user, digest = _python_module(arch, checkpoint)
        graph = _export(user, shape, arch)
        source = {"kind": "python", "spec": arch[len("python:"):], "checkpoint": str(Path(checkpoint).resolve()),
                  "sha256": digest}
    else:
        raise UserError(f"model.arch {arch!r} is not an imported network (use onnx:PATH or python:MODULE:FUNCTION)")
    model = rebuild(graph, shape, mean, std)
    if arch.startswith("python:"):
        _check_same(user, model[1], shape, arch)
    k = _num_classes(model, shape)
    if num_classes is not None and k != num_classes:
        raise UserError(f"model.arch {arch} gives {k} outputs but the data set has {num_classes} classes")
    return Imported(model, graph, source, k)


def rebuild(graph: bytes, shape: tuple[int, int, int], mean, std) -> nn.Module:
    """The network of stored ONNX ``graph`` bytes for inputs of ``shape``, normalisation in front."""
    return _wrap(import_onnx(graph, flat_input=tuple(shape), image_shape=tuple(shape)), mean, std)


def _python_module(arch: str, checkpoint: str | None) -> tuple[nn.Module, str]:
    """The user's module with ``checkpoint`` loaded, and the checkpoint file's content hash."""
    spec = arch[len("python:"):]
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise UserError(f"model.arch {arch!r}: write python:MODULE:FUNCTION (a dotted module or a .py file, and "
                        "a function returning the nn.Module)")
    if not checkpoint:
        raise UserError(f"model.arch {arch} needs model.checkpoint: the network's state_dict (.pt/.pth)")
    factory = getattr(_import_user_module(module_name), func_name, None)
    if not callable(factory):
        raise UserError(f"model.arch {arch}: '{module_name}' has no function '{func_name}'")
    try:
        model = factory()
    except TypeError as e:
        raise UserError(f"model.arch {arch}: {func_name}() must build the network without arguments ({e}); "
                        "wrap it in a function that passes them") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.arch {arch}: {func_name}() returned {type(model).__name__}, not an nn.Module")
    state, digest = _read_state_dict(checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"model.checkpoint '{checkpoint}' does not fit {func_name}(): "
                        f"{str(e).splitlines()[1 if len(str(e).splitlines()) > 1 else 0].strip()[:200]}") from None
    return model.eval(), digest


def _import_user_module(name: str):
    """Import the user's module: a ``.py`` file (its folder importable meanwhile) or a dotted name (cwd importable)."""
    path = Path(name)
    extra = str(path.resolve().parent) if name.endswith(".py") else str(Path.cwd())
    added = extra not in sys.path
    if added:
        sys.path.insert(0, extra)
    try:
        if name.endswith(".py"):
            if not path.is_file():
                raise UserError(f"python module file '{name}' does not exist")
            spec = importlib.util.spec_from_file_location(f"_abcrown_plugins_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise UserError(f"cannot import '{name}' ({e}); give a .py file path or run from the folder holding it") from None
    finally:
        if added:
            sys.path.remove(extra)


def _read_state_dict(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state_dict in ``path`` (wrappers undone) and the file's sha256, from one read."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"model.checkpoint '{path}' does not exist") from None
    except OSError as e:
        raise UserError(f"model.checkpoint '{path}' cannot be read ({e.strerror or e})") from None
    try:
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors of all kinds
        raise UserError(f"model.checkpoint '{path}' cannot be read safely (weights_only): "
                        f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    if isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):  # ERAN's [state_dict] files
        data = data[0]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"model.checkpoint '{path}' is not a state_dict (name -> tensor) or {{'state_dict': ...}}")
    if data and all(k.startswith("module.") for k in data):  # saved from DataParallel
        data = {k[len("module."):]: v for k, v in data.items()}
    return data, _sha256(raw)


def _export(model: nn.Module, shape: tuple[int, int, int], arch: str) -> bytes:
    """The user's module as ONNX (BatchNorm kept, batch dimension free)."""
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, *shape),), buf, opset_version=17, dynamo=False,
                              do_constant_folding=False, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    except Exception as e:  # the exporter raises many kinds for unsupported code
        raise UserError(f"model.arch {arch}: cannot export the network to ONNX for import ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    return buf.getvalue()


def _check_same(user: nn.Module, graph_module: nn.Module, shape: tuple[int, int, int], arch: str) -> None:
    from abcrown_plugins.numerics import compare_logits

    gen = torch.Generator().manual_seed(2)
    x = torch.rand(4, *shape, generator=gen)
    with torch.no_grad():
        ref, got = user(x), graph_module(x)
    compare_logits(np.asarray(ref.reshape(4, -1)), np.asarray(got.reshape(4, -1)),
                   f"import of {arch} (graph vs the module)")
