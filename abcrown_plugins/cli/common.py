"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import re
import sys

from abcrown_plugins.config import load_config, parse_override_args
from abcrown_plugins.errors import UserError

PROG = "abcrown-plugins"


#: What argparse takes for a value, not an option, after a flag: negative numbers, fractions, -inf/-nan
#: (so ``--eps -1/255`` reaches the value checks and gets their message).
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(/\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one line) instead of printing usage and exiting."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message if len(message) <= 200 else message[:200] + '...'} (see {self.prog} --help)")


EXECUTOR_FLAGS = (("executor", "executor.kind"), ("workers", "executor.workers"), ("ray_address", "executor.ray_address"))


def add_executor_args(parser) -> None:
    """``--executor``, ``--workers``, ``--ray-address``: where the command's parallel tasks run."""
    g = parser.add_argument_group("executor (where parallel tasks run; results never change)")
    g.add_argument("--executor", choices=("local", "ray"), help="local worker processes (default) or a Ray cluster")
    g.add_argument("--workers", type=int, help="local worker processes (default 1: this process)")
    g.add_argument("--ray-address", help="join this running Ray cluster (default: start a local one)")


def executor_overrides(args) -> list[tuple[str, object]]:
    """The executor flags the user gave, as config overrides."""
    return [(key, getattr(args, flag)) for flag, key in EXECUTOR_FLAGS if getattr(args, flag, None) is not None]


def config_from(args):
    """The config of ``args.config`` (may be None) with ``args.overrides`` and executor flags applied."""
    return load_config(args.config, parse_override_args(args.overrides) + executor_overrides(args))


def warn(message: str) -> None:
    """``abcrown-plugins: warning: MESSAGE`` on stderr (one line; the command goes on)."""
    print(f"{PROG}: warning: {message}", file=sys.stderr)
