"""Hand results to a Python function, batch by batch or row by row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from sluice.connectors.base import Sink, SinkWriter
from sluice.errors import ConfigError


class _CallbackWriter(SinkWriter):
    def __init__(self, sink: CallbackSink) -> None:
        self.sink = sink

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        fn = self.sink.fn
        if self.sink.per_row:
            for row in batch.iter_rows(named=True):
                fn(row)
        else:
            fn(batch)


class CallbackSink(Sink):
    """Calls a function with every batch, or every row (see :func:`callback`)."""

    name = "callback"

    def __init__(self, fn: Callable[[Any], object], *, per_row: bool = False) -> None:
        if not callable(fn):
            raise ConfigError(f"callback sink: fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.per_row = per_row

    def create_writer(self, subtask: int, parallelism: int) -> SinkWriter:
        return _CallbackWriter(self)


def callback(fn: Callable[[Any], object], *, per_row: bool = False) -> CallbackSink:
    """Call ``fn(df)`` with each output batch (a Polars DataFrame), or
    ``fn(row)`` with each row as a dict when ``per_row=True``.

    The function runs on the job's thread: keep it quick, or hand work off.
    With a parallel sink it is called by every subtask.

    >>> import sluice as sl
    >>> seen = []
    >>> flow = sl.Flow("cb")
    >>> flow.source([{"x": 1}, {"x": 2}]).sink(sl.sinks.callback(seen.append, per_row=True))
    >>> _ = flow.run()
    >>> seen
    [{'x': 1}, {'x': 2}]
    """
    return CallbackSink(fn, per_row=per_row)


__all__ = ["CallbackSink", "callback"]
