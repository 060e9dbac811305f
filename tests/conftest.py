"""Shared fixtures for the test suite."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def slow_sample() -> bool:
    """True when CI runs a bounded sample of the slow tests (SLUICE_SLOW_SAMPLE=1)."""
    return os.environ.get("SLUICE_SLOW_SAMPLE") == "1"
