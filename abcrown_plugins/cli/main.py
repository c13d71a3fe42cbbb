"""``abcrown-plugins``: the command line.

:mod:`.parsers` declares every sub-command and names its handler; the handler's
module (``*_commands.py``) is imported only when its command runs. Every user
error ends as one line
``abcrown-plugins: error: ...`` on stderr and exit code 2, without a traceback.
Commands that take a config accept ``--section.key VALUE`` overrides
(``args.overrides``); a command that takes none sets ``no_overrides=True``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from abcrown_plugins.cli.common import PROG, Parser
from abcrown_plugins.cli.parsers import register_all
from abcrown_plugins.errors import UserError
from abcrown_plugins.fileio import os_error


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Pruning, certified training and verification plugins for α,β-CROWN.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    register_all(sub)
    return p


def handler(spec: str):
    """The function ``"MODULE:FUNCTION"`` names (a module of this package), imported now."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(f"abcrown_plugins.cli.{module}"), name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    importlib.import_module("abcrown_plugins.tuning").tune_allocator()  # glibc: reuse batch buffers (tuning.alloc)
    try:
        args, rest = build_parser().parse_known_args(argv)
        if rest and getattr(args, "no_overrides", False):
            raise UserError(f"unexpected arguments: {' '.join(rest)[:80]}")
        args.overrides = rest
        return handler(args.func)(args)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the system refuses (too long, no permission, disk full): the user's to fix
        print(f"{PROG}: error: {os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
