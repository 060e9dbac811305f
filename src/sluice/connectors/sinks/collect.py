"""Collect results in memory (tests, notebooks)."""

from __future__ import annotations

import threading
from typing import Any

import polars as pl

from sluice.connectors.base import Sink, SinkWriter


class _CollectWriter(SinkWriter):
    def __init__(self, parent: CollectSink) -> None:
        self.parent = parent

    def write(self, batch: pl.DataFrame) -> None:
        with self.parent._lock:
            self.parent.batches.append(batch)


class CollectSink(Sink):
    """Keeps every batch; read them with :meth:`to_polars` or :meth:`rows`.

    >>> import sluice as sl
    >>> out = sl.sinks.collect()
    >>> flow = sl.Flow("c")
    >>> flow.source([{"a": 1}]).sink(out)
    >>> _ = flow.run()
    >>> out.rows()
    [{'a': 1}]
    """

    name = "collect"

    def __init__(self) -> None:
        self.batches: list[pl.DataFrame] = []
        self._lock = threading.Lock()

    def create_writer(self, subtask: int, parallelism: int) -> SinkWriter:
        return _CollectWriter(self)

    def to_polars(self) -> pl.DataFrame:
        """All rows received so far as one DataFrame (empty if none)."""
        with self._lock:
            if not self.batches:
                return pl.DataFrame()
            return pl.concat(self.batches, how="diagonal_relaxed")

    def rows(self) -> list[dict[str, Any]]:
        return self.to_polars().to_dicts()

    def __len__(self) -> int:
        return sum(b.height for b in self.batches)


def collect() -> CollectSink:
    """A sink that gathers results in memory (see :class:`CollectSink`)."""
    return CollectSink()
