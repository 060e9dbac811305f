"""Fixtures of the embedded-log tests: a fresh data directory per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.log import Log


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    lg = Log(tmp_path / "data")
    yield lg
    lg.close()
