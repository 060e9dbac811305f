"""Print results to standard output (demos, debugging)."""

from __future__ import annotations

import io
import sys

import polars as pl

from sluice.connectors.base import Sink, SinkWriter
from sluice.connectors.sinks.files import iso_datetimes
from sluice.errors import ConfigError


class _StdoutWriter(SinkWriter):
    def __init__(self, sink: StdoutSink) -> None:
        self.sink = sink

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        out = sys.stdout  # looked up per batch so that redirection (and capsys) works
        if not self.sink.pretty:
            buf = io.BytesIO()
            iso_datetimes(batch).write_ndjson(buf)
            out.write(buf.getvalue().decode("utf-8"))
            return
        shown = batch.head(self.sink.max_rows)
        with pl.Config(tbl_rows=self.sink.max_rows, tbl_cols=-1, fmt_str_lengths=80):
            out.write(f"{shown}\n")
        hidden = batch.height - shown.height
        if hidden:
            out.write(f"… {hidden} more row{'' if hidden == 1 else 's'}\n")

    def flush(self) -> None:
        sys.stdout.flush()


class StdoutSink(Sink):
    """Prints every batch: as a table (``pretty=True``) or as JSON lines (see :func:`stdout`)."""

    name = "stdout"
    max_parallelism = 1

    def __init__(self, *, pretty: bool = True, max_rows: int = 20) -> None:
        if max_rows < 1:
            raise ConfigError(f"stdout sink: max_rows must be >= 1, got {max_rows}")
        self.pretty = pretty
        self.max_rows = max_rows

    def create_writer(self, subtask: int, parallelism: int) -> SinkWriter:
        return _StdoutWriter(self)


def stdout(*, pretty: bool = True, max_rows: int = 20) -> StdoutSink:
    """Print each batch to standard output (one subtask).

    Parameters
    ----------
    pretty
        Print a table of at most ``max_rows`` rows per batch (followed by the
        number of rows not shown); ``False`` prints every row as a JSON line.
    max_rows
        Rows shown per batch when ``pretty``.

    >>> import sluice as sl
    >>> flow = sl.Flow("show")
    >>> flow.source([{"x": 1}, {"x": 2}]).sink(sl.sinks.stdout(pretty=False))
    >>> _ = flow.run()
    {"x":1}
    {"x":2}
    """
    return StdoutSink(pretty=pretty, max_rows=max_rows)


__all__ = ["StdoutSink", "stdout"]
