"""Reading VNN-LIB local-robustness properties, 1.0 and 2.0, in the forms real VNN-COMP benchmarks use.

:func:`read_robustness_vnnlib` / :func:`parse_robustness` read the local-robustness
subset of both versions: declarations; input bounds ``(assert (<= X_i c))``/``(>= ...)``
(either side, strict or not, alone or in an ``and``); the output part as an ``or``
of ``and``s of one comparison each, a single comparison, or several asserts, where
every comparison says some ``Y_j`` is at least ``Y_label`` (``(>= Y_j Y_l)`` or
``(<= Y_l Y_j)``) and every ``j != label`` appears: mnist_fc, cifar2020,
cifar10_resnet, oval21, eran, verivital. A file may be gzipped (``.gz``). Anything
else (targeted properties, input disjunctions, constraints on a single logit,
arithmetic) is refused with one line saying so (:class:`VnnlibError`).

This module sits low in the package (data sets read benchmarks with it); writing
lives in :mod:`abcrown_plugins.export.vnnlib`.
"""

from __future__ import annotations

import gzip
import itertools
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from abcrown_plugins.errors import UserError

__all__ = ["RobustnessProperty", "VnnlibError", "parse_robustness", "read_robustness_vnnlib", "read_vnnlib_text"]

_MAX_DISJUNCTS = 100_000


class VnnlibError(UserError, ValueError):
    """A VNN-LIB file this project cannot read as a local-robustness property (one line, naming the file)."""


@dataclass(frozen=True)
class RobustnessProperty:
    """A local-robustness property: the input box, flattened in NCHW order, and the label it must keep.

    Attributes:
        lower, upper: ``float64`` arrays of the flattened input box (``lower <= upper``).
        label: The class the whole box must keep.
        num_classes: Number of outputs ``K``.
        version: VNN-LIB version of the file (1 or 2).
        input_shape: The declared input tensor shape (VNN-LIB 2.0, batch axis
            included, e.g. ``(1, 3, 32, 32)``); ``None`` for 1.0 files, which declare
            flat scalars.
    """

    lower: np.ndarray
    upper: np.ndarray
    label: int
    num_classes: int
    version: int = 1
    input_shape: tuple[int, ...] | None = None


# ------------------------------------------------------------------------ reading

class _Index(tuple):
    """A bracketed index or shape, ``[0,1,2]``."""


_COMMENT = re.compile(r";[^\n]*")
_TOKEN = re.compile(r"\(|\)|\[[^\]]*\]|[^\s()\[\]]+")
_FLAT = re.compile(r"([XY])_(\d+)")
_COMPARISONS = {"<=": "<=", "<": "<=", ">=": ">=", ">": ">="}  # boxes are closed: strict reads as non-strict
_IGNORED = {"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"}


def read_vnnlib_text(path: str | Path) -> str:
    """The text of a VNN-LIB file, gunzipped when its name ends in ``.gz``; VnnlibError if unreadable."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
        return raw.decode("utf-8")
    except FileNotFoundError:
        raise VnnlibError(f"VNN-LIB file '{path}' not found; check the path (instances.csv names it)") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise VnnlibError(f"cannot read VNN-LIB file '{path}' ({type(e).__name__}); replace it with a readable "
                          "copy") from None


def _sexprs(text: str, where: str) -> list[Any]:
    """Top-level s-expressions of ``text``: nested lists of atoms (str) and :class:`_Index` tuples."""
    stack: list[list[Any]] = [[]]
    for token in _TOKEN.findall(_COMMENT.sub(" ", text)):
        if token == "(":
            stack.append([])
        elif token == ")":
            if len(stack) == 1:
                raise VnnlibError(f"{where}: unbalanced ')'; the file is not valid VNN-LIB")
            done = stack.pop()
            stack[-1].append(done)
        elif token.startswith("["):
            try:
                body = token[1:-1].strip()
                stack[-1].append(_Index(int(v) for v in body.split(",")) if body else _Index())
            except ValueError:
                raise VnnlibError(f"{where}: unreadable index {token[:40]!r}; indices are integers") from None
        else:
            stack[-1].append(token)
    if len(stack) != 1:
        raise VnnlibError(f"{where}: unbalanced '(' (the file ends inside an expression); it is truncated or "
                          "not valid VNN-LIB")
    return stack[0]


class _Reader:
    """Turns the top-level forms of one file into a :class:`RobustnessProperty` (module docstring)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.version = 1
        self.declared = {"X": set(), "Y": set()}   # 1.0: declared flat indices
        self.mentioned = {"x": set(), "y": set()}  # 1.0: flat indices used in asserts
        self.tensors: dict[str, tuple[str, tuple[int, ...]]] = {}  # 2.0: name -> ("X" | "Y", shape)
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []

    def fail(self, what: str) -> VnnlibError:
        return VnnlibError(f"{self.where}: {what}")

    def unsupported(self, what: str) -> VnnlibError:
        return self.fail(f"not a local-robustness property this project reads ({what}); it reads an input box "
                         "and 'some Y_j >= Y_label for every j != label' (see abcrown_plugins.export.vnnlib)")

    # -- declarations
    def form(self, node: Any) -> None:
        if not isinstance(node, list) or not node or not isinstance(node[0], str):
            raise self.fail(f"unexpected top-level {str(node)[:40]!r}; expected (declare-...) or (assert ...)")
        head = node[0]
        if head == "vnnlib-version":
            if len(node) != 2 or node[1] != "<2.0>":
                raise self.fail(f"VNN-LIB version {' '.join(map(str, node[1:]))[:20]!r} is unknown; "
                                "1.0 and <2.0> are read")
            self.version = 2
        elif head == "declare-const":
            match = _FLAT.fullmatch(str(node[1])) if len(node) == 3 else None
            if match is None:
                raise self.unsupported(f"constant {str(node[1:])[:40]}; only X_i and Y_j are known")
            self.declared[match.group(1)].add(int(match.group(2)))
        elif head == "declare-network":
            self.version = 2
            if any(kind == "X" for kind, _ in self.tensors.values()):
                raise self.unsupported("more than one network")
            for member in node[2:]:
                self.member(member)
        elif head == "assert":
            if len(node) != 2:
                raise self.fail("an assert takes one expression")
            expr = self.expr(node[1])
            kinds = self.kinds(expr)
            if kinds == {"x"}:
                self.inputs.append(expr)
            elif kinds == {"y"}:
                self.outputs.append(expr)
            elif kinds:
                raise self.unsupported("an assert mixes inputs and outputs")
            else:
                raise self.unsupported("an assert without variables")
        elif head not in _IGNORED:
            raise self.unsupported(f"command {head[:30]!r}")

    def member(self, member: Any) -> None:
        if not isinstance(member, list) or not member:
            raise self.fail("malformed declare-network")
        head = member[0]
        if head in ("declare-input", "declare-output"):
            shape = next((m for m in member[2:] if isinstance(m, _Index)), None)
            if len(member) < 4 or not isinstance(member[1], str) or shape is None:
                raise self.fail(f"malformed {head}; expected ({head} NAME TYPE [SHAPE])")
            kind = "X" if head == "declare-input" else "Y"
            if any(k == kind for k, _ in self.tensors.values()):
                raise self.unsupported(f"more than one {'input' if kind == 'X' else 'output'} tensor")
            self.tensors[member[1]] = (kind, tuple(shape))
        elif head == "declare-hidden":
            raise self.unsupported("hidden-layer variables")
        else:
            raise self.unsupported(f"network member {str(head)[:30]!r}")

    # -- expressions: ("and" | "or", [children]) | ("cmp", op, term, term); terms ("x" | "y", i) | ("c", value)
    def expr(self, node: Any) -> tuple:
        if not isinstance(node, list) or not node or not isinstance(node[0], str):
            raise self.unsupported(f"expression {str(node)[:40]!r}")
        head, args = node[0], node[1:]
        if head in ("and", "or"):
            if not args:
                raise self.fail(f"empty ({head})")
            return (head, [self.expr(a) for a in args])
        if head in _COMPARISONS:
            terms = self.terms(args)
            if len(terms) != 2:
                raise self.unsupported(f"a comparison of {len(terms)} terms")
            return ("cmp", _COMPARISONS[head], terms[0], terms[1])
        raise self.unsupported(f"operator {head[:20]!r}")

    def terms(self, args: list[Any]) -> list[tuple]:
        out, i = [], 0
        while i < len(args):
            arg = args[i]
            index = args[i + 1] if i + 1 < len(args) and isinstance(args[i + 1], _Index) else None
            i += 2 if index is not None else 1
            out.append(self.term(arg, index))
        return out

    def term(self, arg: Any, index: _Index | None) -> tuple:
        if isinstance(arg, list):  # (- c): SMT-LIB's negative constant
            if len(arg) == 2 and arg[0] == "-" and isinstance(arg[1], str):
                kind, value = self.term(arg[1], None)
                if kind == "c":
                    return ("c", -value)
            raise self.unsupported(f"arithmetic {str(arg)[:40]!r}")
        if not isinstance(arg, str):
            raise self.fail(f"unexpected {str(arg)[:40]!r}")
        if index is not None or arg in self.tensors:
            if arg not in self.tensors:
                raise self.fail(f"variable {arg!r} is not declared by declare-network")
            kind, shape = self.tensors[arg]
            index = index if index is not None else _Index()
            if len(index) != len(shape) or any(not 0 <= v < d for v, d in zip(index, shape)):
                raise self.fail(f"index {arg}{list(index)} is outside its declared shape {list(shape)}")
            flat = int(np.ravel_multi_index(index, shape)) if shape else 0
            return (kind.lower(), flat)
        match = _FLAT.fullmatch(arg)
        if match is not None:
            kind, flat = match.group(1).lower(), int(match.group(2))
            self.mentioned[kind].add(flat)
            return (kind, flat)
        try:
            value = float(arg)
        except ValueError:
            raise self.fail(f"unknown symbol {arg[:40]!r}") from None
        if not math.isfinite(value):
            raise self.fail(f"constant {arg[:40]!r} is not finite")
        return ("c", value)

    def kinds(self, expr: tuple) -> set[str]:
        if expr[0] == "cmp":
            return {t[0] for t in expr[2:] if t[0] != "c"}
        return set().union(*(self.kinds(e) for e in expr[1]))

    # -- the property
    def sizes(self) -> tuple[int, int, tuple[int, ...] | None]:
        """Number of inputs, of outputs, and the declared input shape (2.0)."""
        if self.version == 2 or self.tensors:
            shapes = {kind: shape for kind, shape in self.tensors.values()}
            if set(shapes) != {"X", "Y"}:
                raise self.fail("declare-network must declare one input and one output tensor")
            return int(np.prod(shapes["X"], dtype=np.int64)), int(np.prod(shapes["Y"], dtype=np.int64)), shapes["X"]
        n = 1 + max(self.declared["X"] | self.mentioned["x"], default=-1)
        k = 1 + max(self.declared["Y"] | self.mentioned["y"], default=-1)
        return n, k, None

    def box(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        lower, upper = np.full(n, -np.inf), np.full(n, np.inf)

        def bound(expr: tuple) -> None:
            if expr[0] == "or":
                raise self.unsupported("a disjunction over inputs")
            if expr[0] == "and":
                for e in expr[1]:
                    bound(e)
                return
            _, op, a, b = expr
            if a[0] == "c" and b[0] == "x":  # c <= X  is  X >= c
                a, b, op = b, a, ">=" if op == "<=" else "<="
            if a[0] != "x" or b[0] != "c":
                raise self.unsupported("a comparison between inputs")
            if a[1] >= n:
                raise self.fail(f"X_{a[1]} is bounded but only {n} inputs are declared")
            if op == "<=":
                upper[a[1]] = min(upper[a[1]], b[1])
            else:
                lower[a[1]] = max(lower[a[1]], b[1])

        for expr in self.inputs:
            bound(expr)
        open_ = np.flatnonzero(~(np.isfinite(lower) & np.isfinite(upper)))
        if open_.size:
            raise self.fail(f"input X_{open_[0]} has no {'lower' if np.isinf(lower[open_[0]]) else 'upper'} bound "
                            f"({open_.size} of {n} inputs are unbounded); a robustness property bounds every input")
        empty = np.flatnonzero(lower > upper)
        if empty.size:
            raise self.fail(f"input X_{empty[0]} has lower bound {lower[empty[0]]!r} above its upper bound "
                            f"{upper[empty[0]]!r}: the box is empty")
        return lower, upper

    def label(self, k: int) -> int:
        if not self.outputs:
            raise self.unsupported("no output constraint")
        dnf: list[list[tuple[int, int]]] = [[]]
        for expr in self.outputs:
            dnf = [a + b for a, b in itertools.product(dnf, self.dnf(expr))]
            if len(dnf) > _MAX_DISJUNCTS:
                raise self.unsupported("an output constraint too large to expand")
        if len(dnf) == 1 and len(dnf[0]) > 1 and len({a for a, _ in dnf[0]}) == 1:
            target = dnf[0][0][0]
            raise self.unsupported(f"a targeted property: Y_{target} above every other class, which names no "
                                   "true label")
        if any(len(conj) != 1 for conj in dnf):
            raise self.unsupported("an output clause with several comparisons")
        pairs = [conj[0] for conj in dnf]
        labels = {b for _, b in pairs}
        if len(labels) != 1:
            raise self.unsupported(f"the violation compares against several classes {sorted(labels)[:5]}")
        label = labels.pop()
        others = {a for a, _ in pairs}
        if label >= k or any(a >= k for a in others):
            raise self.fail(f"an output index is beyond the {k} declared outputs")
        if label in others or others != set(range(k)) - {label}:
            missing = sorted(set(range(k)) - {label} - others)
            raise self.unsupported(f"the violation for label {label} leaves out classes {missing[:5]}" if missing
                                   else f"the violation compares Y_{label} with itself")
        return label

    def dnf(self, expr: tuple) -> list[list[tuple[int, int]]]:
        """Disjunctive normal form; each comparison as ``(a, b)``: ``Y_a >= Y_b``."""
        if expr[0] == "or":
            return [conj for e in expr[1] for conj in self.dnf(e)]
        if expr[0] == "and":
            out: list[list[tuple[int, int]]] = [[]]
            for e in expr[1]:
                out = [a + b for a, b in itertools.product(out, self.dnf(e))]
                if len(out) > _MAX_DISJUNCTS:
                    raise self.unsupported("an output constraint too large to expand")
            return out
        _, op, a, b = expr
        if a[0] != "y" or b[0] != "y":
            raise self.unsupported("a constraint on a single logit (a constant threshold)")
        return [[(a[1], b[1]) if op == ">=" else (b[1], a[1])]]


def parse_robustness(text: str, where: str = "<text>") -> RobustnessProperty:
    """The local-robustness property in VNN-LIB ``text`` (1.0 or 2.0, module docstring).

    ``where`` names the source in errors. Raises :class:`VnnlibError` (one line)
    for anything outside the local-robustness subset.
    """
    reader = _Reader(where)
    for node in _sexprs(text, where):
        reader.form(node)
    n, k, shape = reader.sizes()
    if n < 1 or k < 2:
        raise reader.unsupported(f"{n} inputs and {k} outputs declared; a classifier has inputs and at least two "
                                 "outputs")
    lower, upper = reader.box(n)
    return RobustnessProperty(lower, upper, reader.label(k), k, reader.version, shape)


def read_robustness_vnnlib(path: str | Path) -> RobustnessProperty:
    """Parse the local-robustness property of the VNN-LIB file ``path`` (``.gz`` too; :func:`parse_robustness`)."""
    return parse_robustness(read_vnnlib_text(path), str(path))
