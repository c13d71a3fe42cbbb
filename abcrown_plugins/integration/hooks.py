"""Deprecated: use :mod:`abcrown_plugins.abcrown.hooks` (same functions)."""

from abcrown_plugins.abcrown.hooks import zoo_data, zoo_model  # noqa: F401

__all__ = ["zoo_data", "zoo_model"]
