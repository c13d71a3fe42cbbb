"""Value kinds of config options: each parses a YAML/CLI value or says why not.

A kind never evaluates code: numbers come from ``int``/``float``/``Fraction``,
everything else is checked structurally. ``parse`` raises :class:`KindError`
with the expected kind's name; the loader adds the key and the source. Real
numbers are finite: ``nan``, ``inf`` and values too large for a float
(``1e400``, a 400-digit integer) are refused. An error quotes at most ~80
characters of the value (:func:`quote`). :func:`parse_value` checks a value
outside a config (a command-line flag) the same way, raising UserError.
"""

from __future__ import annotations

import math
import reprlib
from fractions import Fraction
from typing import Any, Callable

from abcrown_plugins.errors import UserError

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 3, 80, 80, 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


class KindError(ValueError):
    """A value that does not fit the option's kind."""


def quote(value: Any, limit: int = 80) -> str:
    """``repr(value)`` of at most ``limit`` (+3) characters, computed without building a huge repr."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int beyond Python's int-to-str digit limit
        text = f"<{type(value).__name__} too long to print>"
    return text if len(text) <= limit else text[:limit] + "..."


class Kind:
    """Base kind: ``name`` is shown in errors and in ``config --dump``."""

    name = "any"

    def parse(self, value: Any) -> Any:  # pragma: no cover - overridden
        return value

    def fail(self, value: Any) -> KindError:
        return KindError(f"expected {self.name}, got {quote(value)} ({type(value).__name__})")


def _check_range(kind: Kind, out: float, lo: float | None, hi: float | None, value: Any):
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise KindError(f"expected {kind.name}, got {quote(value)}")
    return out


def _finite(kind: Kind, value: Any, convert: Callable[[], float]) -> float:
    """``convert()``, a float, unless it overflows or is NaN/inf: then a KindError naming ``value``."""
    try:
        out = convert()
    except OverflowError:
        raise KindError(f"expected a finite {kind.name}, got {quote(value)} (too large for a float)") from None
    if not math.isfinite(out):
        raise KindError(f"expected a finite {kind.name}, got {quote(value)}")
    return out


def parse_value(kind: Kind, value: Any, name: str) -> Any:
    """``kind.parse(value)`` for a setting outside a config (e.g. a flag ``--timeout``); UserError naming it."""
    try:
        return kind.parse(value)
    except KindError as e:
        raise UserError(f"{name}: {e}") from None


def _range_name(base: str, lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"{base} in [{lo}, {hi}]"
    if lo is not None:
        return f"{base} >= {lo}"
    if hi is not None:
        return f"{base} <= {hi}"
    return base


class Int(Kind):
    def __init__(self, min: int | None = None, max: int | None = None):
        self.lo, self.hi = min, max
        self.name = _range_name("int", min, max)

    def parse(self, value: Any) -> int:
        if isinstance(value, bool):
            raise self.fail(value)
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        elif isinstance(value, str):
            try:
                out = int(value.strip())
            except ValueError:
                raise self.fail(value) from None
        else:
            raise self.fail(value)
        if abs(out) >= 2 ** 63:
            raise KindError(f"expected {self.name}, got {quote(value)} (beyond a 64-bit integer)")
        return _check_range(self, out, self.lo, self.hi, value)


class Float(Kind):
    """A real number; ``1e-3`` written in YAML (a string to PyYAML) is accepted."""

    def __init__(self, min: float | None = None, max: float | None = None):
        self.lo, self.hi = min, max
        self.name = _range_name("float", min, max)

    def parse(self, value: Any) -> float:
        if isinstance(value, bool):
            raise self.fail(value)
        if isinstance(value, (int, float)):
            out = _finite(self, value, lambda: float(value))
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise self.fail(value) from None
            out = _finite(self, value, lambda: number)
        else:
            raise self.fail(value)
        return _check_range(self, out, self.lo, self.hi, value)


class Eps(Kind):
    """A non-negative perturbation radius: a number or a fraction like ``2/255``."""

    name = "float or fraction (e.g. 2/255)"

    def parse(self, value: Any) -> float:
        if isinstance(value, bool):
            raise self.fail(value)
        if isinstance(value, (int, float)):
            out = _finite(self, value, lambda: float(value))
        elif isinstance(value, str):
            text = value.replace(" ", "")
            try:  # float() reads "1e999999999" at once; Fraction would build the integer
                number = Fraction(text) if "/" in text else float(text)
            except (ValueError, ZeroDivisionError):
                raise self.fail(value) from None
            out = _finite(self, value, lambda: float(number))
        else:
            raise self.fail(value)
        if out < 0:
            raise KindError(f"expected a non-negative radius such as 2/255, got {quote(value)}")
        return out


class Bool(Kind):
    name = "bool"

    def parse(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise self.fail(value)


class Str(Kind):
    name = "str"

    def __init__(self, choices: tuple[str, ...] | None = None):
        self.choices = choices
        if choices:
            self.name = "one of " + ", ".join(choices)

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(value)
        if self.choices and value not in self.choices:
            raise self.fail(value)
        return value


class Optional(Kind):
    """``null`` or a value of the inner kind."""

    def __init__(self, inner: Kind):
        self.inner = inner
        self.name = f"{inner.name} or null"

    def parse(self, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip() in ("null", "None", "~")):
            return None
        try:
            return self.inner.parse(value)
        except KindError:
            raise self.fail(value) from None


class List(Kind):
    """A real list (YAML sequence) of the inner kind, stored as a tuple."""

    def __init__(self, inner: Kind):
        self.inner = inner
        self.name = f"list of {inner.name}"

    def parse(self, value: Any) -> tuple:
        if not isinstance(value, (list, tuple)):
            raise self.fail(value)
        try:
            return tuple(self.inner.parse(v) for v in value)
        except KindError:
            raise self.fail(value) from None
