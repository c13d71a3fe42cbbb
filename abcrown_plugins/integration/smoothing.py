"""Deprecated: use :mod:`abcrown_plugins.abcrown.smoothing` (same functions)."""

from abcrown_plugins.abcrown.smoothing import certify_instance, label_from_spec  # noqa: F401

__all__ = ["certify_instance", "label_from_spec"]
