"""File sinks: JSON Lines, CSV and Parquet, one file or rolling part files.

A path ending in the format's extension (``"late.jsonl"``) is one file written
by a single subtask. Any other path is a directory in which every subtask
writes part files ``part-<subtask>-<seq>.<ext>``. A part file is written under
a hidden name ``.part-<subtask>-<seq>.<ext>.inprogress`` and renamed to its
final name (after flush and fsync, with an atomic ``os.replace``) when it rolls
or when the sink closes, so a reader of the directory only ever sees complete
files. Sequence numbers continue after the part files already in the directory.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, BinaryIO

import polars as pl

from sluice.connectors.base import Sink, SinkWriter
from sluice.errors import ConfigError
from sluice.time.durations import Duration, parse_duration

#: File name endings that make a sink path a single file, per format.
SINGLE_FILE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "jsonl": (".jsonl", ".ndjson"),
    "csv": (".csv", ".tsv"),
    "parquet": (".parquet", ".pq"),
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)


def parse_size(value: int | str, *, what: str = "size") -> int:
    """Bytes from an int or a string such as ``"128MB"``, ``"64MiB"``, ``"1g"``.

    >>> parse_size("128MB"), parse_size("1KiB"), parse_size(10)
    (128000000, 1024, 10)
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size like '128MB', got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        if m is None:
            raise ConfigError(f"{what}: cannot parse {value!r}; use e.g. 1000000, '64MB', '1GiB'")
        unit = m.group(2).lower().rstrip("b")
        base = 1024 if unit.endswith("i") else 1000
        power = " kmgt".index(unit.rstrip("i") or " ")
        n = int(float(m.group(1)) * base**power)
    if n < 1:
        raise ConfigError(f"{what}: must be at least 1 byte, got {value!r}")
    return n


def iso_datetimes(df: pl.DataFrame) -> pl.DataFrame:
    """Datetime, Date and Time columns as ISO-8601 strings (for text formats).

    >>> import datetime as dt
    >>> iso_datetimes(pl.DataFrame({"t": [dt.datetime(2024, 1, 2, 3, 4, 5)]}))["t"][0]
    '2024-01-02T03:04:05'
    """
    exprs = []
    for c, dtype in df.schema.items():
        if isinstance(dtype, pl.Datetime):
            fmt = "%Y-%m-%dT%H:%M:%S%.f" + ("%:z" if dtype.time_zone else "")
            exprs.append(pl.col(c).dt.to_string(fmt))
        elif isinstance(dtype, pl.Date):
            exprs.append(pl.col(c).dt.to_string("%Y-%m-%d"))
        elif isinstance(dtype, pl.Time):
            exprs.append(pl.col(c).dt.to_string("%H:%M:%S%.f"))
    return df.with_columns(exprs) if exprs else df


# -- encoders: one format written into one open file --------------------------------------
class _Encoder(ABC):
    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh

    def fits(self, df: pl.DataFrame) -> Any:
        """``df`` made ready for this file, or ``None`` if its columns cannot go in it."""
        return df

    @abstractmethod
    def write(self, data: Any) -> None: ...

    def finish(self) -> None:  # noqa: B027 - optional hook
        """Write what the format needs at the end of a file."""


class _JsonlEncoder(_Encoder):
    def write(self, data: Any) -> None:
        buf = io.BytesIO()
        iso_datetimes(data).write_ndjson(buf)
        self.fh.write(buf.getvalue())


class _CsvEncoder(_Encoder):
    def __init__(self, fh: BinaryIO, separator: str) -> None:
        super().__init__(fh)
        self.separator = separator
        self.columns: list[str] | None = None

    def fits(self, df: pl.DataFrame) -> Any:
        if self.columns is None:
            return df
        if set(df.columns) != set(self.columns):
            return None
        return df.select(self.columns)

    def write(self, data: Any) -> None:
        buf = io.BytesIO()
        iso_datetimes(data).write_csv(
            buf, include_header=self.columns is None, separator=self.separator
        )
        self.columns = self.columns or list(data.columns)
        self.fh.write(buf.getvalue())


class _ParquetEncoder(_Encoder):
    def __init__(self, fh: BinaryIO) -> None:
        super().__init__(fh)
        self.writer: Any = None

    def fits(self, df: pl.DataFrame) -> Any:
        table = df.to_arrow()
        if self.writer is None:
            return table
        schema = self.writer.schema
        if set(table.column_names) != set(schema.names):
            return None
        table = table.select(schema.names)
        if table.schema.equals(schema):
            return table
        try:
            return table.cast(schema)
        except Exception:
            return None

    def write(self, data: Any) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.fh, data.schema)
        self.writer.write_table(data)

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# -- the writer -------------------------------------------------------------------------
class FileSinkWriter(SinkWriter):
    """Writes one subtask's batches: into the single file, or into rolling part files."""

    def __init__(self, sink: FileSink, subtask: int) -> None:
        self.sink = sink
        self.subtask = subtask
        self._lock = threading.Lock()
        self._fh: BinaryIO | None = None
        self._enc: _Encoder | None = None
        self._tmp = ""
        self._final = ""
        self._seq = 0
        self._rows = 0
        self._opened_at = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._error: BaseException | None = None
        #: Final paths of the files this writer completed, in order.
        self.completed: list[str] = []

    def open(self) -> None:
        sink = self.sink
        if sink.single_file:
            parent = os.path.dirname(os.path.abspath(sink.path))
            os.makedirs(parent, exist_ok=True)
            if sink.format != "parquet":
                self._start()  # text files exist (maybe empty) from the start
            return
        os.makedirs(sink.path, exist_ok=True)
        self._seq = self._next_seq()
        if sink.rolling_interval_ms is not None:
            self._ticker = threading.Thread(
                target=self._tick, name=f"sluice-roll-{sink.name}-{self.subtask}", daemon=True
            )
            self._ticker.start()

    def _next_seq(self) -> int:
        pat = re.compile(rf"^\.?part-{self.subtask}-(\d+)\.")
        seqs = [int(m.group(1)) for n in os.listdir(self.sink.path) if (m := pat.match(n))]
        return max(seqs) + 1 if seqs else 0

    def _start(self) -> None:
        sink = self.sink
        if sink.single_file:
            self._final = sink.path
            if sink.format == "parquet":
                d, base = os.path.split(sink.path)
                self._tmp = os.path.join(d, f".{base}.inprogress")
            else:
                self._tmp = sink.path
        else:
            name = f"part-{self.subtask}-{self._seq:05d}{sink.extension}"
            self._final = os.path.join(sink.path, name)
            self._tmp = os.path.join(sink.path, f".{name}.inprogress")
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed when the file rolls
        self._enc = sink.encoder(self._fh)
        self._rows = 0
        self._opened_at = time.monotonic()

    def _complete(self) -> None:
        """Finish the current file: footer, flush, fsync, rename to its final name."""
        assert self._fh is not None and self._enc is not None
        self._enc.finish()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        self._enc = None
        if self._tmp != self._final:
            os.replace(self._tmp, self._final)
            _fsync_dir(os.path.dirname(os.path.abspath(self._final)))
        self.completed.append(self._final)
        self._seq += 1

    def _should_roll(self) -> bool:
        sink = self.sink
        if sink.single_file or self._fh is None:
            return False
        if sink.rolling_rows is not None and self._rows >= sink.rolling_rows:
            return True
        if sink.rolling_bytes is not None and self._fh.tell() >= sink.rolling_bytes:
            return True
        return sink.rolling_interval_ms is not None and (
            (time.monotonic() - self._opened_at) * 1000 >= sink.rolling_interval_ms
        )

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        with self._lock:
            self._raise_pending()
            if self._fh is None:
                self._start()
            assert self._enc is not None and self._fh is not None
            data = self._enc.fits(batch)
            if data is None:
                if self.sink.single_file:
                    raise ValueError(
                        f"{self.sink.format} sink {self.sink.path!r}: the batch's columns "
                        f"{batch.schema} do not match the file's; write to a directory to "
                        "start a new part file when the schema changes"
                    )
                self._complete()  # a part file has one schema: start a new one
                self._start()
                assert self._enc is not None
                data = self._enc.fits(batch)
            self._enc.write(data)
            self._rows += batch.height
            if self.sink.single_file:
                self._fh.flush()
            elif self._should_roll():
                self._complete()

    def _tick(self) -> None:
        interval_s = (self.sink.rolling_interval_ms or 0) / 1000
        period = min(max(interval_s / 4, 0.01), 1.0)
        while not self._stop.wait(period):
            with self._lock:
                if self._fh is None or self._error is not None:
                    continue
                if (time.monotonic() - self._opened_at) >= interval_s and self._rows:
                    try:
                        self._complete()
                    except BaseException as e:  # surfaced on the next write or close
                        self._error = e

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def flush(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.flush()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            if self._fh is not None:
                self._complete()
            self._raise_pending()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# -- the sinks ----------------------------------------------------------------------------
class FileSink(Sink):
    """Base of the file sinks (see :func:`jsonl`, :func:`csv`, :func:`parquet`)."""

    format = "jsonl"
    extension = ".jsonl"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rolling_rows: int | None = None,
        rolling_bytes: int | str | None = "128MB",
        rolling_interval: Duration | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.name = self.format
        is_dir = os.path.isdir(self.path) or self.path.endswith(("/", os.sep))
        self.single_file = not is_dir and self.path.lower().endswith(
            SINGLE_FILE_EXTENSIONS[self.format]
        )
        self.max_parallelism = 1 if self.single_file else None
        if not self.single_file and os.path.isfile(self.path):
            raise ConfigError(
                f"{self.format} sink: {self.path!r} is a file; give a directory for part "
                f"files or a path ending in {self.extension} for one file"
            )
        if rolling_rows is not None and rolling_rows < 1:
            raise ConfigError(f"{self.format} sink: rolling_rows must be >= 1, got {rolling_rows}")
        self.rolling_rows = rolling_rows
        self.rolling_bytes = (
            None if rolling_bytes is None else parse_size(rolling_bytes, what="rolling_bytes")
        )
        self.rolling_interval_ms = (
            None
            if rolling_interval is None
            else parse_duration(rolling_interval, what="rolling_interval", allow_zero=False)
        )
        if self.single_file and (rolling_rows is not None or rolling_interval is not None):
            raise ConfigError(
                f"{self.format} sink: {self.path!r} is a single file, which does not roll; "
                "give a directory path to write rolling part files"
            )

    def encoder(self, fh: BinaryIO) -> _Encoder:
        return _JsonlEncoder(fh)

    def create_writer(self, subtask: int, parallelism: int) -> SinkWriter:
        return FileSinkWriter(self, subtask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


class JsonlSink(FileSink):
    """JSON Lines output (see :func:`jsonl`)."""

    format = "jsonl"
    extension = ".jsonl"


class CsvSink(FileSink):
    """CSV output (see :func:`csv`)."""

    format = "csv"
    extension = ".csv"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        separator: str = ",",
        rolling_rows: int | None = None,
        rolling_bytes: int | str | None = "128MB",
        rolling_interval: Duration | None = None,
    ) -> None:
        if len(separator) != 1:
            raise ConfigError(f"csv sink: separator must be one character, got {separator!r}")
        self.separator = separator
        super().__init__(
            path,
            rolling_rows=rolling_rows,
            rolling_bytes=rolling_bytes,
            rolling_interval=rolling_interval,
        )

    def encoder(self, fh: BinaryIO) -> _Encoder:
        return _CsvEncoder(fh, self.separator)


class ParquetSink(FileSink):
    """Parquet output (see :func:`parquet`)."""

    format = "parquet"
    extension = ".parquet"

    def encoder(self, fh: BinaryIO) -> _Encoder:
        return _ParquetEncoder(fh)


def jsonl(
    path: str | os.PathLike[str],
    *,
    rolling_rows: int | None = None,
    rolling_bytes: int | str | None = "128MB",
    rolling_interval: Duration | None = None,
) -> JsonlSink:
    """Write JSON Lines: one JSON object per row, datetimes as ISO-8601 strings.

    Parameters
    ----------
    path
        A path ending in ``.jsonl`` (or ``.ndjson``) is one file, written in
        place by a single subtask and flushed after every batch. Any other path
        is a directory of rolling part files ``part-<subtask>-<seq>.jsonl``,
        each visible only once complete.
    rolling_rows
        Start a new part file after this many rows.
    rolling_bytes
        Start a new part file once the current one reaches this size (an int
        or a string such as ``"64MB"``; default 128 MB).
    rolling_interval
        Start a new part file when the current one is this old (``"1m"``),
        checked in the background so that files appear even when input stops.

    >>> import pathlib, tempfile
    >>> import sluice as sl
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "out.jsonl"
    >>> flow = sl.Flow("write")
    >>> flow.source([{"x": 1}, {"x": 2}]).sink(sl.sinks.jsonl(path))
    >>> _ = flow.run()
    >>> print(path.read_text(), end="")
    {"x":1}
    {"x":2}
    """
    return JsonlSink(
        path,
        rolling_rows=rolling_rows,
        rolling_bytes=rolling_bytes,
        rolling_interval=rolling_interval,
    )


def csv(
    path: str | os.PathLike[str],
    *,
    separator: str = ",",
    rolling_rows: int | None = None,
    rolling_bytes: int | str | None = "128MB",
    rolling_interval: Duration | None = None,
) -> CsvSink:
    """Write CSV with a header per file, datetimes as ISO-8601 strings.

    ``path`` and the rolling parameters work as for :func:`jsonl` (a single
    file ends in ``.csv`` or ``.tsv``). A part file holds one set of columns:
    a batch with other columns starts a new part file.

    >>> import pathlib, tempfile
    >>> import sluice as sl
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "parts"
    >>> flow = sl.Flow("write")
    >>> flow.source([{"x": 1}, {"x": 2}]).sink(sl.sinks.csv(out))
    >>> _ = flow.run()
    >>> [p.name for p in out.iterdir()]
    ['part-0-00000.csv']
    >>> print((out / "part-0-00000.csv").read_text(), end="")
    x
    1
    2
    """
    return CsvSink(
        path,
        separator=separator,
        rolling_rows=rolling_rows,
        rolling_bytes=rolling_bytes,
        rolling_interval=rolling_interval,
    )


def parquet(
    path: str | os.PathLike[str],
    *,
    rolling_rows: int | None = None,
    rolling_bytes: int | str | None = "128MB",
    rolling_interval: Duration | None = None,
) -> ParquetSink:
    """Write Parquet files (a row group per batch), finished when they roll or close.

    ``path`` and the rolling parameters work as for :func:`jsonl` (a single
    file ends in ``.parquet`` or ``.pq``; it is written under a hidden name and
    renamed when the sink closes).

    >>> import pathlib, tempfile
    >>> import polars as pl
    >>> import sluice as sl
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> flow = sl.Flow("write")
    >>> rows = sl.sources.memory([{"x": i} for i in range(5)], batch_size=2)
    >>> flow.source(rows).sink(sl.sinks.parquet(out, rolling_rows=2))
    >>> _ = flow.run()
    >>> sorted(p.name for p in out.iterdir())
    ['part-0-00000.parquet', 'part-0-00001.parquet', 'part-0-00002.parquet']
    >>> pl.read_parquet(out)["x"].to_list()
    [0, 1, 2, 3, 4]
    """
    return ParquetSink(
        path,
        rolling_rows=rolling_rows,
        rolling_bytes=rolling_bytes,
        rolling_interval=rolling_interval,
    )


__all__ = [
    "CsvSink",
    "FileSink",
    "FileSinkWriter",
    "JsonlSink",
    "ParquetSink",
    "csv",
    "iso_datetimes",
    "jsonl",
    "parquet",
    "parse_size",
]
