"""``abcrown-plugins``: the command line.

Each command module registers its sub-commands with ``register(subparsers)``
and sets ``func``; every user error ends as one line
``abcrown-plugins: error: ...`` on stderr and exit code 2, without a traceback.
Commands that take a config accept ``--section.key VALUE`` overrides
(``args.overrides``); a command that takes none sets ``no_overrides=True``.
"""

from __future__ import annotations

import sys
from typing import Sequence

from abcrown_plugins.cli import abcrown_commands, pipeline_commands
from abcrown_plugins.cli import smoothing_commands
from abcrown_plugins.cli import pruning_commands
from abcrown_plugins.cli.common import PROG, Parser
from abcrown_plugins.errors import UserError

COMMAND_MODULES = (pipeline_commands, abcrown_commands, smoothing_commands, pruning_commands)


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Pruning, certified training and verification plugins for α,β-CROWN.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, rest = build_parser().parse_known_args(argv)
        if rest and getattr(args, "no_overrides", False):
            raise UserError(f"unexpected arguments: {' '.join(rest)}")
        args.overrides = rest
        return args.func(args)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
