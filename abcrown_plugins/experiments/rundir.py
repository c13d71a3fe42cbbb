"""Run folders: where an experiment writes (one rule) and the claim that keeps runs apart.

The folder of a run is, first found: the one the caller names (``--output``),
``output.dir`` of the config, else ``results/NAME-HASH`` where NAME is
``general.name`` (or the experiment's own name, e.g. ``certify-CKPT-TAG``) and
HASH the hash of the non-default settings (:meth:`abcrown_plugins.config.Config.hash`).

:func:`claim_run_dir` creates the folder or accepts it back when it holds a run
of the same kind and identity, so a killed run resumes where it stopped and two
computations never mix their files. The identity of a run is everything that
changes what it computes: by default the settings the config hash digests, plus
what the config does not pin (the content hash of a checkpoint it reads,
:func:`checkpoint_identity`). It is recorded in ``run.json``; a resume with
anything different is refused with one line naming what differs. The claim
holds an exclusive lock on the folder (``.run.lock``) until the run ends, so two
runs never work in one folder at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from abcrown_plugins import checkpoints
from abcrown_plugins.config import Config, dump_config
from abcrown_plugins.errors import UserError
from abcrown_plugins.fileio import FileLock, atomic_write_text, file_sha256, remove_stale_temps, write_error

__all__ = ["RunClaim", "checkpoint_identity", "claim_run_dir", "run_dir"]

RESULTS = Path("results")
LOCK = ".run.lock"
MARKER = "run.json"
_QUOTE = 60  # characters of a recorded value a message quotes


def run_dir(cfg: Config, explicit: str | Path | None = None, name: str | None = None) -> Path:
    """The output folder of a run of ``cfg`` (module docstring)."""
    if explicit is not None:
        return Path(explicit)
    if cfg.output.dir:
        return Path(cfg.output.dir)
    return RESULTS / f"{name or cfg.general.name}-{cfg.hash()}"


def checkpoint_identity(path: str | Path) -> str:
    """A checkpoint's identity for a run: ``sha256:HEX`` of its file (a path or ``zoo:NAME``), not its path."""
    return "sha256:" + file_sha256(checkpoints.resolve(path))


class RunClaim:
    """The claim of one run folder: its lock, held until :meth:`release` or the end of a ``with`` block.

    When the ``with`` block raises and this claim created the folder's marker
    while nothing but the claim's own files appeared, the claim is undone (the
    folder removed if the claim created it): a run that fails its checks leaves
    no claimed folder behind, and running again after fixing the config works.
    """

    def __init__(self, out: Path, lock: FileLock, created_marker: bool, created_dir: bool):
        self.out, self._lock = out, lock
        self._created_marker, self._created_dir = created_marker, created_dir

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> "RunClaim":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and self._created_marker:
                self._undo()
        finally:
            self.release()

    def _undo(self) -> None:
        own = {LOCK, MARKER, "config.yaml"}
        if not self.out.is_dir() or any(p.name not in own for p in self.out.iterdir()):
            return
        for name in own:
            (self.out / name).unlink(missing_ok=True)
        if self._created_dir:
            try:
                self.out.rmdir()
            except OSError:
                pass


def _quote(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= _QUOTE else text[:_QUOTE] + "..."


def _differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``key: BEFORE before, NOW now`` for every key whose value differs (absent: ``default``)."""
    out = []
    for key in sorted(set(before) | set(now)):
        if before.get(key, "default") != now.get(key, "default"):
            out.append(f"{key}: {_quote(before.get(key, 'default'))} before, {_quote(now.get(key, 'default'))} now")
    return out


def _refuse(out: Path, what: str) -> UserError:
    return UserError(f"output folder '{out}' holds another run ({what}); pass another --output, or delete the "
                     f"folder to start afresh")


def _check_previous(out: Path, previous: dict[str, Any], cfg: Config, kind: str,
                    identity: dict[str, Any]) -> bool:
    """Refuse a folder of another run; True when its marker predates recorded identities (adopt ours)."""
    old_kind = previous.get("kind", "pruning")
    if old_kind != kind:
        raise _refuse(out, f"a {old_kind} run; this is {kind}")
    if "identity" not in previous:  # written before identities were recorded: the config hash decides
        if previous.get("config_hash") != cfg.hash():
            raise _refuse(out, f"config hash {_quote(previous.get('config_hash'))}; this is {cfg.hash()}")
        return True
    diff = _differences(previous["identity"], identity)
    if diff:
        more = f"; and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise _refuse(out, "; ".join(diff[:3]) + more)
    return False


def claim_run_dir(out: Path, cfg: Config, kind: str, identity: Mapping[str, Any] | None = None,
                  config_bound: bool = True) -> RunClaim:
    """Claim the run folder ``out`` for a ``kind`` run of ``cfg``; returns the held :class:`RunClaim`.

    ``identity``: what the run computes from beyond its config; with ``config_bound``
    (the default) the settings that :meth:`Config.hash` digests are part of it too,
    one entry per key, so a refusal names the keys that differ, and an ``identity``
    entry replaces the setting of its name (``{"model.checkpoint":
    checkpoint_identity(path)}``: the checkpoint's content, not its path). The folder is created, or accepted back
    when its ``run.json`` records the same kind and identity; a folder of another
    run, a non-empty folder of anything else, or a folder another run holds
    (its lock) is refused with one line. Writes ``run.json`` and ``config.yaml``
    atomically, and removes the temporaries a killed run left (``.*.tmp``).
    Use as ``with claim_run_dir(...):`` so the lock is released when the run ends.
    """
    out = Path(out)
    full = {**(cfg.hashed_settings() if config_bound else {}), **(identity or {})}
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder '{out}' is a file; pass another --output")
    marker = out / MARKER
    if out.is_dir() and not marker.is_file() and any(p.name != LOCK for p in out.iterdir()):
        raise UserError(f"output folder '{out}' is not empty and holds no abcrown-plugins run; pass another --output")
    created_dir = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e) from None
    lock = FileLock(out / LOCK, f"output folder '{out}' is in use by another run; wait for it to end or pass "
                                f"another --output")
    try:
        adopt, created_marker = False, not marker.is_file()
        if not created_marker:
            try:
                previous = json.loads(marker.read_text())
            except (OSError, ValueError, UnicodeDecodeError):
                raise UserError(f"output folder '{out}' has an unreadable {MARKER}; pass another --output") from None
            if not isinstance(previous, dict):
                raise UserError(f"output folder '{out}' has an unreadable {MARKER}; pass another --output")
            adopt = _check_previous(out, previous, cfg, kind, full)
        remove_stale_temps(out)
        if created_marker or adopt:
            atomic_write_text(marker, json.dumps({"config_hash": cfg.hash(), "name": cfg.general.name, "kind": kind,
                                                  "identity": full}, indent=1) + "\n")
        if created_marker or not (out / "config.yaml").is_file():
            atomic_write_text(out / "config.yaml", dump_config(cfg))
    except BaseException:
        lock.release()
        raise
    return RunClaim(out, lock, created_marker, created_dir)
