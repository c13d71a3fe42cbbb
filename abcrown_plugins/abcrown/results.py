"""α,β-CROWN's results files made readable.

In csv and data-hook modes ``general.results_file`` is a pickle
``{"summary": {word: [index]}, "results": [[word, seconds], ...], "bab_ret": ...}``.
:func:`read_results_pickle` reads it with an unpickler that resolves only
containers and tensors (tensor bytes go through ``torch.load(weights_only=True)``),
so a results file cannot run code; :func:`results_rows` turns it into rows.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any

import torch

from abcrown_plugins.errors import UserError
from abcrown_plugins.fileio import os_error


def _tensor_from_bytes(b: bytes) -> Any:
    return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)


_ALLOWED = {
    ("collections", "defaultdict"): collections.defaultdict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _tensor_from_bytes,
}


class _ResultsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in \
                ("dtype", "scalar", "_reconstruct", "ndarray"):
            import numpy

            core = getattr(numpy, "_core", None) or numpy.core
            return getattr(numpy, name, None) or getattr(core.multiarray, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a results file")


def read_results_pickle(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _ResultsUnpickler(f).load()
    except FileNotFoundError:
        raise UserError(f"results file '{path}' not found") from None
    except OSError as e:
        raise os_error(e) from None
    except Exception as e:  # noqa: BLE001 - a corrupt pickle fails in many ways; all mean "not a results file"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:80]
        raise UserError(f"'{path}' is not an α,β-CROWN results pickle: {first}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), (list, tuple)):
        raise UserError(f"'{path}' is not an α,β-CROWN results pickle (no 'results' list)")
    return data


def verdict(word: str) -> str:
    """α,β-CROWN's result word as VNN-COMP's: unsat / sat / timeout / unknown."""
    w = word.lower()
    if "unknown" in w or "timed out" in w or "timeout" in w:
        return "timeout" if ("timed out" in w or "timeout" in w) else "unknown"
    if "unsafe" in w:
        return "sat"
    if "safe" in w:
        return "unsat"
    return "unknown"


def results_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per instance: index, α,β-CROWN's word, VNN-COMP verdict, seconds."""
    rows = []
    for i, entry in enumerate(data["results"]):
        word, seconds = (entry[0], entry[1]) if isinstance(entry, (list, tuple)) and len(entry) >= 2 else (entry, None)
        try:
            seconds = float(seconds) if seconds is not None else None
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"results entry {i}: time {str(seconds)[:80]!r} is not a number; is this an α,β-CROWN "
                            "results pickle?") from None
        rows.append({"index": i, "abcrown_result": str(word)[:200], "result": verdict(str(word)[:200]),
                     "time_s": seconds})
    return rows
