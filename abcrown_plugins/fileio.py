"""Atomic file writes: a file appears complete or not at all.

Every file the project writes (checkpoints, tables, figures, VNNLIB, run
markers) goes through here: the bytes go to a temporary file beside the
target, are flushed and fsynced, get the permissions the umask gives a new
file, and are renamed over the target. A killed process leaves the old file
(or none), never half a new one. A folder built beside its target and renamed
into place (:func:`make_temp_dir`) likewise gets a new folder's permissions,
not ``mkdtemp``'s private 0700.

A write that the operating system refuses (disk full, read-only file system, no
permission, a file where a folder should be) is one
:class:`~abcrown_plugins.errors.UserError` line naming the path and what to do
(:func:`write_error`), and leaves no temporary file behind. A run that owns an
output folder removes the temporaries a killed predecessor left in it
(:func:`remove_stale_temps`) while it holds the folder's :class:`FileLock`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from abcrown_plugins.errors import UserError

__all__ = ["FileLock", "atomic_write_bytes", "atomic_write_text", "file_sha256", "make_temp_dir", "new_dir_mode",
           "new_file_mode", "os_error", "remove_stale_temps", "write_error"]

_HINTS = {
    errno.ENOSPC: "the disk is full; free space and run the same command again",
    errno.EDQUOT: "the disk quota is exhausted; free space and run the same command again",
    errno.EROFS: "the file system is read-only; pass another output folder",
    errno.EACCES: "no permission to write there; pass another output folder",
    errno.EPERM: "no permission to write there; pass another output folder",
    errno.ENOTDIR: "a file stands where a folder is needed; pass another output folder",
    errno.EEXIST: "a file stands where a folder is needed; pass another output folder",
    errno.EISDIR: "a folder stands where the file goes; pass another output folder",
    errno.ENAMETOOLONG: "the name is too long; pass a shorter path",
    errno.ENOENT: "it does not exist; check the path",
}


def os_error(error: OSError) -> UserError:
    """The one-line UserError for an OSError on any file (the path shortened to 80 characters)."""
    name = str(error.filename) if error.filename is not None else ""
    name = name if len(name) <= 80 else name[:80] + "..."
    reason = error.strerror or type(error).__name__
    hint = _HINTS.get(error.errno, "check the path")
    return UserError(f"'{name}': {reason}; {hint}" if name else f"{reason}; {hint}")


def write_error(path: str | Path, error: OSError) -> UserError:
    """The one-line UserError for ``error``, raised while writing ``path``."""
    reason = error.strerror or type(error).__name__
    hint = _HINTS.get(error.errno, "check the output folder, or pass another one")
    return UserError(f"cannot write '{path}': {reason}; {hint}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permissions ``open()`` gives a new file under the current umask (0666 & ~umask, e.g. 0644)."""
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    """The permissions ``mkdir`` gives a new folder under the current umask (0777 & ~umask, e.g. 0755)."""
    return 0o777 & ~_umask()


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new, uniquely named folder in ``parent`` (created if missing) with a normal folder's permissions.

    For output built beside its final place and renamed there at the end:
    ``tempfile.mkdtemp`` makes it 0700, which the rename would keep.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, new_dir_mode())
    return tmp


def atomic_write_bytes(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, rename over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())  # mkstemp's 0600 would make results private
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of the file's bytes: what a run records to know its input again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def remove_stale_temps(folder: str | Path, prefix: str = ".", suffix: str = ".tmp", recursive: bool = True) -> int:
    """Delete what a killed writer left in ``folder``: files and folders named ``PREFIX...SUFFIX``.

    Only for a folder the caller owns (it holds the folder's lock, or is the only
    writer of such names): a live writer's temporary would be removed too.
    Returns how many entries were removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    walk = os.walk(folder) if recursive else [(str(folder), [d.name for d in folder.iterdir() if d.is_dir()],
                                               [f.name for f in folder.iterdir() if not f.is_dir()])]
    stale = [Path(root) / name for root, dirs, files in walk for name in [*dirs, *files]
             if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix)]
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return len(stale)


class FileLock:
    """An exclusive, non-blocking ``fcntl.flock`` on the file ``path`` (created if missing).

    Held until :meth:`release` (or the end of a ``with`` block, or the object's
    deletion, or the process's end: the kernel drops the lock of a killed
    process, so there is no stale lock to clean up). A second holder, in this
    process or another, gets ``UserError(busy)`` at once. The file holds the
    holder's process id, for the message.
    """

    def __init__(self, path: str | Path, busy: str):
        self.path = Path(path)
        self._fd: int | None = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, new_file_mode())
        except OSError as e:
            raise write_error(self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise UserError(busy + (f" (process {holder})" if holder.isdigit() else "")) from None
        except OSError as e:
            os.close(fd)
            raise write_error(self.path, e) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
