"""Locate an α,β-CROWN installation beside the project.

Convention: ``ABCROWN_HOME`` is an α,β-CROWN checkout (holding
``complete_verifier/abcrown.py``); ``ABCROWN_PYTHON`` is the interpreter of the
environment it runs in (default: the current interpreter). This project
never installs α,β-CROWN itself.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from abcrown_plugins.errors import UserError

INSTALL_HINT = ("α,β-CROWN not found: clone https://github.com/Verified-Intelligence/alpha-beta-CROWN, install it "
                "as its README says, this package into the same environment (pip install --no-deps -e .), then set "
                "ABCROWN_HOME to the checkout and ABCROWN_PYTHON to that environment's python")


@dataclass(frozen=True)
class AbcrownInstall:
    home: Path
    python: Path

    @property
    def verifier_dir(self) -> Path:
        return self.home / "complete_verifier"

    @property
    def script(self) -> Path:
        return self.verifier_dir / "abcrown.py"


def find_abcrown() -> AbcrownInstall | None:
    """The installation named by the environment, or None when it is not usable."""
    home = os.environ.get("ABCROWN_HOME")
    if not home:
        return None
    python = Path(os.environ.get("ABCROWN_PYTHON") or sys.executable)
    inst = AbcrownInstall(Path(home).expanduser().resolve(), python)
    if not inst.script.is_file() or not python.is_file():
        return None
    return inst


def require_abcrown() -> AbcrownInstall:
    inst = find_abcrown()
    if inst is None:
        home = os.environ.get("ABCROWN_HOME")
        detail = f" (ABCROWN_HOME={home} has no complete_verifier/abcrown.py or ABCROWN_PYTHON is missing)" if home \
            else ""
        raise UserError(INSTALL_HINT + detail)
    return inst
