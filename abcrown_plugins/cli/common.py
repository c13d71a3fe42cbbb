"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse

from abcrown_plugins.config import load_config, parse_override_args
from abcrown_plugins.errors import UserError

PROG = "abcrown-plugins"


class Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one line) instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def config_from(args):
    """The config of ``args.config`` (may be None) with ``args.overrides`` applied."""
    return load_config(args.config, parse_override_args(args.overrides))
