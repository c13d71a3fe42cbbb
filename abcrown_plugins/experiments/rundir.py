"""Run folders: where an experiment writes (one rule) and the claim that keeps runs apart.

The folder of a run is, first found: the one the caller names (``--output``),
``output.dir`` of the config, else ``results/NAME-HASH`` where NAME is
``general.name`` (or the experiment's own name, e.g. ``certify-CKPT-TAG``) and
HASH the hash of the non-default settings (:meth:`abcrown_plugins.config.Config.hash`).

:func:`claim_run_dir` creates the folder or accepts it back when it holds a run
of the same kind and config, so a killed run resumes where it stopped and two
configs never mix their files.
"""

from __future__ import annotations

import json
from pathlib import Path

from abcrown_plugins.config import Config, dump_config
from abcrown_plugins.errors import UserError
from abcrown_plugins.fileio import atomic_write_text

__all__ = ["claim_run_dir", "run_dir"]

RESULTS = Path("results")


def run_dir(cfg: Config, explicit: str | Path | None = None, name: str | None = None) -> Path:
    """The output folder of a run of ``cfg`` (module docstring)."""
    if explicit is not None:
        return Path(explicit)
    if cfg.output.dir:
        return Path(cfg.output.dir)
    return RESULTS / f"{name or cfg.general.name}-{cfg.hash()}"


def claim_run_dir(out: Path, cfg: Config, kind: str) -> None:
    """Create the run folder ``out``, or accept it when it holds a ``kind`` run of the same config.

    Writes ``config.yaml`` and a ``run.json`` marker (atomically). A folder holding
    another config's run, or anything else, is refused: resuming there would mix runs.
    """
    config_hash = cfg.hash()
    marker = out / "run.json"
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous.get("config_hash") != config_hash or previous.get("kind", "pruning") != kind:
            raise UserError(f"output folder '{out}' holds another run ({previous.get('kind', 'pruning')}, config hash "
                            f"{previous.get('config_hash')}; this is {kind}, {config_hash}); pass another --output "
                            "or delete it")
        return
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder '{out}' is not empty and holds no abcrown-plugins run; pass another --output")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    atomic_write_text(marker, json.dumps({"config_hash": config_hash, "name": cfg.general.name, "kind": kind}) + "\n")
