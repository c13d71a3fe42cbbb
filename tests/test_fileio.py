"""Output gets normal permissions: files per umask (not mkstemp's 0600), folders 0777 & ~umask (not 0700)."""

from __future__ import annotations

import os
import stat

import pytest

from abcrown_plugins.fileio import atomic_write_text, make_temp_dir, new_dir_mode, new_file_mode


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_temp_dir_and_atomic_files_have_normal_permissions(tmp_path, umask_022):
    assert new_file_mode() == 0o644 and new_dir_mode() == 0o755
    d = make_temp_dir(tmp_path / "parent", prefix=".out.")
    assert d.parent == tmp_path / "parent" and d.name.startswith(".out.") and mode(d) == 0o755
    atomic_write_text(d / "a.txt", "x")
    assert mode(d / "a.txt") == 0o644
    os.replace(d, tmp_path / "out")  # what an exporter does at the end: the folder keeps its mode
    assert mode(tmp_path / "out") == 0o755


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        assert mode(make_temp_dir(tmp_path, "p")) == 0o700 and new_file_mode() == 0o600
    finally:
        os.umask(old)
