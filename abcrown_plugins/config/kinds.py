"""Value kinds of config options: each parses a YAML/CLI value or says why not.

A kind never evaluates code: numbers come from ``int``/``float``/``Fraction``,
everything else is checked structurally. ``parse`` raises :class:`KindError`
with the expected kind's name; the loader adds the key and the source.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any


class KindError(ValueError):
    """A value that does not fit the option's kind."""


class Kind:
    """Base kind: ``name`` is shown in errors and in ``config --dump``."""

    name = "any"

    def parse(self, value: Any) -> Any:  # pragma: no cover - overridden
        return value

    def fail(self, value: Any) -> KindError:
        return KindError(f"expected {self.name}, got {value!r} ({type(value).__name__})")


def _check_range(kind: Kind, out: float, lo: float | None, hi: float | None, value: Any):
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise KindError(f"expected {kind.name}, got {value!r}")
    return out


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
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                raise self.fail(value) from None
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
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(Fraction(value.replace(" ", "")))
            except (ValueError, ZeroDivisionError):
                raise self.fail(value) from None
        else:
            raise self.fail(value)
        if out < 0:
            raise KindError(f"expected a non-negative radius, got {value!r}")
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
