"""The ``abcrown-plugins`` command line."""

from abcrown_plugins.cli.main import main

__all__ = ["main"]
