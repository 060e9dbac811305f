"""File sinks: JSON Lines, CSV and Parquet, one file or rolling part files.

A path ending in the format's extension (``"late.jsonl"``) is one file written
by a single subtask. Any other path is a directory in which every subtask
writes part files ``part-<subtask>-<seq>.<ext>``. A part file is written under
a hidden name ``.part-<subtask>-<seq>.<ext>.inprogress`` and renamed to its
final name (after flush and fsync, with an atomic ``os.replace``) when it rolls
or when the sink closes, so a reader of the directory only ever sees complete
files. Sequence numbers continue after the part files already in the directory
(final, pending or in progress), so a restarted job never overwrites a file.

In a checkpointing job the writers are transactional and output is published
only by the commit of a completed checkpoint (see :class:`FileSink`; the
renames and appends of a commit are in ``_commit``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, BinaryIO

import polars as pl

from sluice.connectors.base import Sink, SinkWriter
from sluice.connectors.sinks._commit import discard, fsync_dir, publish, size_of
from sluice.connectors.sinks._encoders import (
    CsvEncoder,
    Encoder,
    JsonlEncoder,
    ParquetEncoder,
    iso_datetimes,
)
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


# -- the writer -------------------------------------------------------------------------
class FileSinkWriter(SinkWriter):
    """Writes one subtask's batches: into the single file, or into rolling part files.

    When :attr:`transactional` (the job checkpoints), a finished file is renamed
    to a hidden pending name instead of its final one, :meth:`pre_commit` lists
    the pending files and :meth:`commit` publishes them (see :class:`FileSink`).
    """

    def __init__(self, sink: FileSink, subtask: int) -> None:
        self.sink = sink
        self.subtask = subtask
        self._lock = threading.Lock()
        self._fh: BinaryIO | None = None
        self._enc: Encoder | None = None
        self._tmp = ""
        self._final = ""
        self._seq = 0
        self._rows = 0
        self._opened_at = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._error: BaseException | None = None
        # Transactional: pre-committed files not yet committed, as listed in the txn.
        self._pending: list[list[Any]] = []
        # Transactional single file: its size (bytes, or rows for Parquet) once the
        # pending segments are appended, and the committed file an encoder continues.
        self._end = 0
        self._continue: str | None = None
        #: Final paths of the files this writer published, in order.
        self.completed: list[str] = []

    @property
    def _segments(self) -> bool:
        """Whether the writer writes segments of one file (the transactional single file)."""
        return self.sink.single_file and self.transactional

    def open(self) -> None:
        sink = self.sink
        os.makedirs(sink.directory, exist_ok=True)
        if self._segments:
            self._open_segments()
        elif sink.single_file:
            if sink.format != "parquet":
                self._start()  # text files exist (maybe empty) from the start
            return
        self._seq = self._next_seq()
        if sink.rolling_interval_ms is not None and not sink.single_file:
            self._ticker = threading.Thread(
                target=self._tick, name=f"sluice-roll-{sink.name}-{self.subtask}", daemon=True
            )
            self._ticker.start()

    def _open_segments(self) -> None:
        sink = self.sink
        resumed, sink.recovered = sink.recovered, False
        if resumed:
            self._end = size_of(sink.path, parquet=sink.format == "parquet")
            self._continue = sink.path if self._end else None
            return
        # A new job replaces the file: the leftovers of an earlier job are not its own.
        discard(sink.directory, sink.hidden)
        if sink.format != "parquet":
            with open(sink.path, "wb"):
                pass  # text files exist (maybe empty) from the start

    def _next_seq(self) -> int:
        if self.sink.single_file:
            base = re.escape(os.path.basename(self.sink.path))
            pat = re.compile(rf"^\.{base}\.(\d+)\.pending$")
        else:  # final, pending and in-progress names
            pat = re.compile(rf"^\.?part-{self.subtask}-(\d+)\.")
        seqs = [int(m.group(1)) for n in os.listdir(self.sink.directory) if (m := pat.match(n))]
        return max(seqs) + 1 if seqs else 0

    def _start(self) -> None:
        sink = self.sink
        if sink.single_file:
            self._final = sink.path
            if sink.format == "parquet" or self.transactional:
                self._tmp = sink.hidden_path(f"{os.path.basename(sink.path)}.inprogress")
            else:
                self._tmp = sink.path
        else:
            name = f"part-{self.subtask}-{self._seq:05d}{sink.extension}"
            self._final = os.path.join(sink.path, name)
            self._tmp = sink.hidden_path(f"{name}.inprogress")
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed when the file rolls
        if self._enc is None:
            self._enc = sink.encoder(self._fh)
            if self._continue is not None:
                self._enc.continue_file(self._continue)
                self._continue = None
        else:  # the next segment of the single file
            self._enc.fh = self._fh
        self._rows = 0
        self._opened_at = time.monotonic()

    def _complete(self) -> None:
        """Finish the current file (footer, flush, fsync), then rename it to its
        final name, or to its pending name in a transaction."""
        assert self._fh is not None and self._enc is not None
        self._enc.finish()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        if not self._segments:
            self._enc = None
        if self.transactional:
            self._pend()
        else:
            if self._tmp != self._final:
                os.replace(self._tmp, self._final)
                fsync_dir(self.sink.directory)
            self.completed.append(self._final)
        self._seq += 1

    def _pend(self) -> None:
        final = os.path.basename(self._final)
        if self._segments:
            hidden = f".{final}.{self._seq:05d}.pending"
            size = self._rows if self.sink.format == "parquet" else os.path.getsize(self._tmp)
            entry: list[Any] = [hidden, final, self._end, self._end + size]
            self._end += size
        else:
            hidden = f".{final}.pending"
            entry = [hidden, final]
        os.replace(self._tmp, self.sink.hidden_path(hidden))
        fsync_dir(self.sink.directory)
        self._pending.append(entry)

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

    # -- two-phase commit ---------------------------------------------------------------
    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        """Finish the current file as pending and list every pending file:
        ``{"files": [[hidden, final], ...]}`` (part files) or ``{"segments":
        [[hidden, final, before, after], ...]}`` (single file), names relative to
        the sink's directory."""
        if not self.transactional:
            return super().pre_commit(checkpoint_id)
        with self._lock:
            self._raise_pending()
            if self._fh is not None and self._rows:
                self._complete()
            key = "segments" if self._segments else "files"
            return {key: [list(e) for e in self._pending]}

    def commit(self, checkpoint_id: int, txn: dict[str, Any]) -> None:
        """Publish the files of ``txn`` (idempotent)."""
        if not self.transactional:
            return
        with self._lock:
            published = self.sink.publish(txn)
            listed = {e[0] for key in ("files", "segments") for e in txn.get(key, [])}
            self._pending = [e for e in self._pending if e[0] not in listed]
            for name in published:
                path = os.path.join(self.sink.directory, name)
                if path not in self.completed:
                    self.completed.append(path)

    def close(self) -> None:
        """Finish and publish the current file; in a transaction, publish
        nothing: what is not committed stays hidden (recovery deletes it)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            if self._fh is not None:
                if self.transactional:
                    self._abandon()
                else:
                    self._complete()
            self._raise_pending()

    def _abandon(self) -> None:
        assert self._fh is not None
        try:
            if self._enc is not None:
                self._enc.finish()
        finally:
            self._fh.close()
            self._fh = None
            self._enc = None


# -- the sinks ----------------------------------------------------------------------------
class FileSink(Sink):
    """Base of the file sinks (see :func:`jsonl`, :func:`csv`, :func:`parquet`).

    In a checkpointing job the sink is exactly-once (two-phase commit): output
    becomes visible only when the checkpoint that covers it is complete.

    - Part files: a finished part file (rolled, or cut at a checkpoint) is renamed
      to ``.part-<subtask>-<seq>.<ext>.pending``; the checkpoint's commit renames
      it to ``part-<subtask>-<seq>.<ext>``.
    - Single file: the rows between two checkpoints are written to a hidden
      segment ``.<name>.<seq>.pending``, which the commit appends to the file
      (a text file grows in place; a Parquet file is rewritten with the new row
      groups, so keep single Parquet files small or write a directory). A
      reader sees the file grow a checkpoint at a time, never a row that could
      be taken back.

    :meth:`recover` (restoring a checkpoint) publishes what that checkpoint
    pre-committed and deletes every other hidden file of the sink: the rows
    they hold are written again by the replay.
    """

    format = "jsonl"
    extension = ".jsonl"
    exactly_once = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rolling_rows: int | None = None,
        rolling_bytes: int | str | None = "128MB",
        rolling_interval: Duration | None = None,
        partition_by: str | list[str] | None = None,
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
        #: The directory the sink writes in (the parent of a single file).
        self.directory = (
            os.path.dirname(os.path.abspath(self.path)) if self.single_file else self.path
        )
        if self.single_file:
            base = re.escape(os.path.basename(self.path))
            pattern = rf"^\.{base}\.(?:\d+\.pending|inprogress|merging)$"
        else:
            pattern = rf"^\.part-\d+-\d+{re.escape(self.extension)}\.(?:pending|inprogress)$"
        #: The names of the sink's hidden (uncommitted) files.
        self.hidden = re.compile(pattern)
        #: Set by :meth:`recover`: the next writer of a single file continues it.
        self.recovered = False
        #: Hive-style partition columns (``<dir>/<col>=<value>/part-...``).
        self.partition_by: list[str] | None = (
            [partition_by] if isinstance(partition_by, str) else list(partition_by or []) or None
        )
        if self.partition_by and self.single_file:
            raise ConfigError(
                f"{self.format} sink: {self.path!r} is a single file; partition_by "
                "needs a directory path"
            )

    def hidden_path(self, name: str) -> str:
        """The path of hidden file ``.<name>`` in the sink's directory."""
        return os.path.join(self.directory, name if name.startswith(".") else f".{name}")

    def encoder(self, fh: BinaryIO) -> Encoder:
        return JsonlEncoder(fh)

    def create_writer(self, subtask: int, parallelism: int) -> SinkWriter:
        if self.partition_by:
            from sluice.connectors.sinks._partitioned import PartitionedWriter

            return PartitionedWriter(self, subtask)
        return FileSinkWriter(self, subtask)

    def publish(self, txn: dict[str, Any]) -> list[str]:
        """Publish the files of a pre-committed transaction (idempotent); return
        the final names."""
        return publish(self.directory, txn, parquet=self.format == "parquet", sink=self.name)

    def recover(self, committed: list[dict[str, Any]]) -> None:
        """Publish the transactions of the restored checkpoint, then delete the
        sink's other hidden files (output written after the checkpoint)."""
        self.recovered = True
        if self.partition_by:
            from sluice.connectors.sinks._partitioned import recover_partitioned

            recover_partitioned(self, committed)
            return
        if not os.path.isdir(self.directory):
            return
        for txn in committed:
            self.publish(txn)
        discard(self.directory, self.hidden)

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
        partition_by: str | list[str] | None = None,
    ) -> None:
        if len(separator) != 1:
            raise ConfigError(f"csv sink: separator must be one character, got {separator!r}")
        self.separator = separator
        super().__init__(
            path,
            rolling_rows=rolling_rows,
            rolling_bytes=rolling_bytes,
            rolling_interval=rolling_interval,
            partition_by=partition_by,
        )

    def encoder(self, fh: BinaryIO) -> Encoder:
        return CsvEncoder(fh, self.separator)


class ParquetSink(FileSink):
    """Parquet output (see :func:`parquet`)."""

    format = "parquet"
    extension = ".parquet"

    def encoder(self, fh: BinaryIO) -> Encoder:
        return ParquetEncoder(fh)


def jsonl(
    path: str | os.PathLike[str],
    *,
    rolling_rows: int | None = None,
    rolling_bytes: int | str | None = "128MB",
    rolling_interval: Duration | None = None,
    partition_by: str | list[str] | None = None,
) -> JsonlSink:
    """Write JSON Lines: one JSON object per row, datetimes as ISO-8601 strings.

    Parameters
    ----------
    path
        A path ending in ``.jsonl`` (or ``.ndjson``) is one file, written in
        place by a single subtask and flushed after every batch. Any other path
        is a directory of rolling part files ``part-<subtask>-<seq>.jsonl``,
        each visible only once complete. In a checkpointing job, output becomes
        visible only when a checkpoint covering it completes (exactly-once;
        see :class:`FileSink`).
    rolling_rows
        Start a new part file after this many rows.
    rolling_bytes
        Start a new part file once the current one reaches this size (an int
        or a string such as ``"64MB"``; default 128 MB).
    rolling_interval
        Start a new part file when the current one is this old (``"1m"``),
        checked in the background so that files appear even when input stops.
    partition_by
        Column(s) to partition a directory by, Hive-style:
        ``<dir>/<col>=<value>/part-...`` (the columns are not repeated inside
        the files; null values go to ``<col>=__HIVE_DEFAULT_PARTITION__``).

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
        partition_by=partition_by,
    )


def csv(
    path: str | os.PathLike[str],
    *,
    separator: str = ",",
    rolling_rows: int | None = None,
    rolling_bytes: int | str | None = "128MB",
    rolling_interval: Duration | None = None,
    partition_by: str | list[str] | None = None,
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
        partition_by=partition_by,
    )


def parquet(
    path: str | os.PathLike[str],
    *,
    rolling_rows: int | None = None,
    rolling_bytes: int | str | None = "128MB",
    rolling_interval: Duration | None = None,
    partition_by: str | list[str] | None = None,
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
        partition_by=partition_by,
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
