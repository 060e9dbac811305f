"""The examples in the connector docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "sluice.connectors.sources.files",
    "sluice.connectors.sources.generator",
    "sluice.connectors.sinks.files",
    "sluice.connectors.sinks.stdout",
    "sluice.connectors.sinks.callback",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
