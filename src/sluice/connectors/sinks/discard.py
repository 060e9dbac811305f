"""A sink that drops everything it receives, counting rows (Flink's ``blackhole``)."""

from __future__ import annotations

import threading

import polars as pl

from sluice.connectors.base import Sink, SinkWriter


class _DiscardWriter(SinkWriter):
    def __init__(self, sink: DiscardSink) -> None:
        self.sink = sink

    def write(self, batch: pl.DataFrame) -> None:
        with self.sink._lock:
            self.sink.rows += batch.height
            self.sink.batches += 1


class DiscardSink(Sink):
    """Drops rows; ``rows`` and ``batches`` count what arrived (see :func:`discard`)."""

    name = "discard"
    #: dropping is idempotent: nothing is ever visible, so nothing can be duplicated
    exactly_once = True

    def __init__(self) -> None:
        self.rows = 0
        self.batches = 0
        self._lock = threading.Lock()

    def create_writer(self, subtask: int, parallelism: int) -> SinkWriter:
        return _DiscardWriter(self)


def discard() -> DiscardSink:
    """A sink that throws results away and only counts them, for benchmarks
    (Flink's ``blackhole`` connector).

    >>> import sluice as sl
    >>> flow = sl.Flow("bh")
    >>> out = sl.sinks.discard()
    >>> flow.source([{"x": 1}, {"x": 2}]).sink(out)
    >>> _ = flow.run()
    >>> out.rows
    2
    """
    return DiscardSink()


__all__ = ["DiscardSink", "discard"]
