"""Fixtures of the fuzz suite (helpers: :mod:`tests.fuzz.helpers`)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fuzz_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")
