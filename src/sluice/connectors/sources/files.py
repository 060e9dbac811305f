"""File sources: JSON Lines, CSV and Parquet files, read in chunks, optionally followed.

A file source takes one file, a directory (every file of its format in it, by
name; hidden ``.`` and ``_`` files are skipped, so in-progress sink output is
never read) or a glob pattern. Each file is one split. Text files are read in
chunks of about ``max_rows`` lines and parsed with Polars; when a chunk does not
parse, its lines are checked one by one so that only the bad ones are reported
(with file and 1-based line number) and the good ones go on.

With ``follow=True`` the source never ends: files are tailed (a JSONL/CSV line
counts only once its newline is written) and new files are picked up as they
appear.

A split is named by its file's path. Its checkpoint state is small JSON: for a
text file the byte offset and line number after the last complete record
handed out, with the CSV header and the column types learnt so far (see
``_text``); for Parquet the next row. A restored reader goes on with exactly the
rows that come next.
"""

from __future__ import annotations

import codecs
import collections
import glob
import os
import threading
import time
from abc import abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import polars as pl

from sluice.connectors.base import ReadBatch, ReaderContext, Source, SplitReader
from sluice.connectors.sources._text import RECHECK_S, CsvReader, JsonlReader
from sluice.errors import ConfigError

FileFormat = Literal["jsonl", "csv", "parquet"]

#: File name endings picked up when the path is a directory.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "jsonl": (".jsonl", ".ndjson"),
    "csv": (".csv", ".tsv"),
    "parquet": (".parquet", ".pq"),
}
_FORMAT_ALIASES = {"jsonl": "jsonl", "ndjson": "jsonl", "csv": "csv", "parquet": "parquet"}
#: Follow mode: an unreadable Parquet file is retried until it has not changed for this long.
_PARQUET_SETTLE_S = 5.0
#: Parquet row groups larger than this many rows are decoded in chunks of it.
_PARQUET_CHUNK_ROWS = 1 << 20
#: Chunks of a Parquet file decoded ahead of the one being handed out.
_PARQUET_PREFETCH = 2
#: Decoded-ahead chunks all readers of the process may hold together (a source
#: of many files reads them all at once: each still holds only its current chunk
#: beyond this budget).
_PARQUET_AHEAD_BUDGET = 4
_DECODER: ThreadPoolExecutor | None = None
_DECODER_LOCK = threading.Lock()
_ahead_held = 0


def _reserve_ahead() -> bool:
    """Take one chunk of the decode-ahead budget, if any is left."""
    global _ahead_held
    with _DECODER_LOCK:
        if _ahead_held >= _PARQUET_AHEAD_BUDGET:
            return False
        _ahead_held += 1
        return True


def _release_ahead() -> None:
    global _ahead_held
    with _DECODER_LOCK:
        _ahead_held -= 1


def _forget_decoder() -> None:
    global _DECODER, _ahead_held
    _DECODER = None  # a forked child has none of the parent's threads
    _ahead_held = 0


os.register_at_fork(after_in_child=_forget_decoder)


def _decoder() -> ThreadPoolExecutor:
    """The threads that decode Parquet chunks ahead (shared by all readers)."""
    global _DECODER
    with _DECODER_LOCK:
        if _DECODER is None:
            _DECODER = ThreadPoolExecutor(2, thread_name_prefix="sluice-parquet")
        return _DECODER


# -- path resolution ---------------------------------------------------------------------
def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _list_files(path: str, kind: str, fmt: str) -> list[str]:
    if kind == "file":
        return [path]
    if kind == "dir":
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            return []
        exts = EXTENSIONS[fmt]
        found = [
            os.path.join(path, n)
            for n in names
            if not n.startswith((".", "_")) and n.lower().endswith(exts)
        ]
        return sorted(p for p in found if os.path.isfile(p))
    return sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))


class FileSource(Source):
    """Base of the file sources: resolves the path and makes one split per file.

    Subclasses set :attr:`format` and implement :meth:`make_reader`.
    """

    format: str = "jsonl"
    replayable = True

    def __init__(self, path: str | os.PathLike[str], *, follow: bool = False) -> None:
        self.path = os.fspath(path)
        self.follow = bool(follow)
        self.bounded = not self.follow
        self.name = self.format
        if os.path.isdir(self.path):
            self._kind = "dir"
        elif os.path.exists(self.path):
            self._kind = "file"
        elif _has_magic(self.path):
            self._kind = "glob"
        else:
            raise ConfigError(
                f"{self.format} source: path {self.path!r} does not exist "
                "(give a file, a directory or a glob pattern such as 'logs/*.jsonl')"
            )
        if not self.follow and not self.list_files():
            if self._kind == "glob":
                raise ConfigError(f"{self.format} source: no file matches {self.path!r}")
            exts = ", ".join(EXTENSIONS[self.format])
            raise ConfigError(
                f"{self.format} source: directory {self.path!r} has no {exts} files "
                "(use a glob pattern to read files with other names)"
            )
        self._seen: set[str] = set()

    def list_files(self) -> list[str]:
        """The files the path designates now, sorted by name."""
        return _list_files(self.path, self._kind, self.format)

    @abstractmethod
    def make_reader(self, file: str) -> SplitReader:
        """The reader of one file (one split)."""

    def create_splits(self, parallelism: int) -> list[SplitReader]:
        files = self.list_files()
        self._seen = set(files)
        return [self.make_reader(f) for f in files]

    def discover_splits(self) -> list[SplitReader]:
        if not self.follow:
            return []
        new = [f for f in self.list_files() if f not in self._seen]
        self._seen.update(new)
        return [self.make_reader(f) for f in new]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, follow={self.follow})"


# -- Parquet ---------------------------------------------------------------------------
class ParquetReader(SplitReader):
    """Reads one Parquet file, decoded by Polars a row group at a time and handed
    out in slices of ``max_rows``. ``line`` in errors is the 0-based row number in
    the file; a checkpoint records the next row.

    Decoding whole row groups (or chunks of at most :data:`_PARQUET_CHUNK_ROWS` rows
    of a larger one) with Polars' native reader is about 1.5x faster than
    pyarrow's batch iterator followed by a conversion to Polars. The next
    :data:`_PARQUET_PREFETCH` chunks are decoded ahead on a small shared thread
    pool (decoding releases the GIL), so decoding overlaps the job's work and
    uses another core. Memory holds the current chunk of each file plus at most
    :data:`_PARQUET_AHEAD_BUDGET` chunks decoded ahead in the whole process.
    """

    def __init__(
        self, path: str, *, follow: bool = False, columns: list[str] | None = None
    ) -> None:
        self.split_id = path
        self.path = path
        self.follow = follow
        self.columns = columns
        self._rows = 0  # rows handed out
        self._chunks: list[tuple[int, int]] | None = None  # (first row, rows) still to decode
        self._buf: pl.DataFrame | None = None  # decoded rows not handed out yet
        self._lf: pl.LazyFrame | None = None
        #: chunks being decoded: (first row, rows, job, holds a unit of the budget)
        self._ahead: collections.deque[tuple[int, int, Future[pl.DataFrame], bool]] = (
            collections.deque()
        )
        self._ctx = ReaderContext("parquet")
        self._next_check = 0.0
        self._last_stat: tuple[int, int] | None = None
        self._stable_since = 0.0

    def open(self, ctx: ReaderContext) -> None:
        self._ctx = ctx

    def position(self) -> int:
        """Rows consumed so far (for checkpoints)."""
        return self._rows

    def snapshot(self) -> dict[str, Any]:
        """``{"row": rows consumed}``."""
        return {"row": self._rows}

    def restore(self, state: dict[str, Any]) -> None:
        self.close()
        self._rows = int(state["row"])
        self.finished = False

    def _start(self) -> bool:
        import pyarrow.parquet as pq

        now = time.monotonic()
        if now < self._next_check:
            return False
        try:
            with pq.ParquetFile(self.path) as pf:
                names = pf.schema_arrow.names
                meta = pf.metadata
                sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            if self.columns is not None:
                missing = [c for c in self.columns if c not in names]
                if missing:
                    raise ConfigError(
                        f"{self._ctx.source_name} source: {self.path!r} has no column(s) "
                        f"{missing} (it has {names})"
                    )
            self._chunks = self._chunks_from(self._rows, sizes)
            lf = pl.scan_parquet(self.path, glob=False, hive_partitioning=False)
            self._lf = lf.select(self.columns) if self.columns is not None else lf
            return True
        except ConfigError:
            raise
        except Exception as e:
            if self.follow and not self._settled(now):
                self._next_check = now + RECHECK_S  # maybe still being written
                return False
            self._ctx.bad_record(f"cannot read Parquet file: {e}", file=self.path)
            self.finished = True
            return False

    def _chunks_from(self, row: int, sizes: list[int]) -> list[tuple[int, int]]:
        """The row ranges still to read, from ``row`` on: the rest of its row
        group, then each following row group, cut at :data:`_PARQUET_CHUNK_ROWS`."""
        total = sum(sizes)
        if row > total:
            raise ConfigError(
                f"{self._ctx.source_name} source: cannot resume {self.path!r} at row {row}: "
                f"the file has only {total} rows; was it replaced after the checkpoint?"
            )
        chunks: list[tuple[int, int]] = []
        first = 0
        for n in sizes:
            lo = max(first, row)
            while lo < first + n:
                k = min(first + n - lo, _PARQUET_CHUNK_ROWS)
                chunks.append((lo, k))
                lo += k
            first += n
        chunks.reverse()  # popped from the end
        return chunks

    def _settled(self, now: float) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        stat = (st.st_size, st.st_mtime_ns)
        if stat != self._last_stat:
            self._last_stat = stat
            self._stable_since = now
        return now - self._stable_since >= _PARQUET_SETTLE_S

    def _decode(self) -> pl.DataFrame | None:
        """The next chunk, decoded; None at the end of the file."""
        assert self._chunks is not None and self._lf is not None
        while True:
            while self._chunks and len(self._ahead) < _PARQUET_PREFETCH:
                # the chunk needed now is always decoded; those after it while
                # the process-wide budget lasts
                ahead = bool(self._ahead)
                if ahead and not _reserve_ahead():
                    break
                first, n = self._chunks.pop()
                job = _decoder().submit(self._lf.slice(first, n).collect)
                self._ahead.append((first, n, job, ahead))
            if not self._ahead:
                return None
            first, n, job, ahead = self._ahead.popleft()
            if ahead:
                _release_ahead()
            try:
                df = job.result()
            except Exception as e:
                # raises, or (dead letters) reports the rows and goes on after them
                self._ctx.bad_record(
                    f"cannot read rows {first}..{first + n - 1} of the Parquet file: {e}",
                    file=self.path,
                    line=first,
                )
                self._rows += n
                continue
            if df.height:
                return df

    def poll(self, max_rows: int) -> ReadBatch | None:
        if self.finished:
            return None
        if self._chunks is None and not self._start():
            return None
        if self._buf is None or self._buf.height == 0:
            self._buf = self._decode()
            if self._buf is None:
                self.close()
                self.finished = True
                return None
        take = max(1, max_rows)
        if self._buf.height <= take:
            df, self._buf = self._buf, None
        else:
            df, self._buf = self._buf.head(take), self._buf.slice(take)
        first = self._rows
        self._rows += df.height
        lines = np.arange(first, self._rows, dtype=np.int64)
        return ReadBatch(df, self.path, first_line=first, lines=lines)

    def close(self) -> None:
        for _, _, job, ahead in self._ahead:
            job.cancel()  # one already running finishes; its result is dropped
            if ahead:
                _release_ahead()
        self._ahead.clear()
        self._chunks = None
        self._buf = None
        self._lf = None


# -- the sources ----------------------------------------------------------------------
def _check_encoding(encoding: str) -> str:
    try:
        codecs.lookup(encoding)
    except LookupError as e:
        raise ConfigError(f"unknown encoding {encoding!r}") from e
    if '\n{,"'.encode(encoding) != b'\n{,"':
        raise ConfigError(
            f"encoding {encoding!r} is not ASCII-compatible; "
            "file sources read UTF-8 and ASCII-compatible encodings (latin-1, cp1252, ...)"
        )
    return encoding


class JsonlSource(FileSource):
    """JSON Lines files: one JSON object per line (see :func:`jsonl`)."""

    format = "jsonl"

    def __init__(
        self, path: str | os.PathLike[str], *, follow: bool = False, encoding: str = "utf-8"
    ) -> None:
        self.encoding = _check_encoding(encoding)
        super().__init__(path, follow=follow)

    def make_reader(self, file: str) -> SplitReader:
        return JsonlReader(file, follow=self.follow, encoding=self.encoding)


class CsvSource(FileSource):
    """CSV files (see :func:`csv`)."""

    format = "csv"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        follow: bool = False,
        has_header: bool = True,
        separator: str = ",",
        encoding: str = "utf-8",
    ) -> None:
        if len(separator) != 1 or separator in '"\r\n':
            raise ConfigError(f"csv source: separator must be one character, got {separator!r}")
        self.has_header = has_header
        self.separator = separator
        self.encoding = _check_encoding(encoding)
        super().__init__(path, follow=follow)

    def make_reader(self, file: str) -> SplitReader:
        return CsvReader(
            file,
            follow=self.follow,
            has_header=self.has_header,
            separator=self.separator,
            encoding=self.encoding,
        )


class ParquetSource(FileSource):
    """Parquet files (see :func:`parquet`)."""

    format = "parquet"
    #: Only these columns are read (projection pushdown); None reads all.
    columns: list[str] | None = None

    def make_reader(self, file: str) -> SplitReader:
        return ParquetReader(file, follow=self.follow, columns=self.columns)


def jsonl(
    path: str | os.PathLike[str], *, follow: bool = False, encoding: str = "utf-8"
) -> JsonlSource:
    """Read JSON Lines files: one JSON object per line.

    Parameters
    ----------
    path
        A file, a directory (its ``.jsonl`` / ``.ndjson`` files, by name) or a
        glob pattern (``"logs/**/*.jsonl"``). Each file is one split.
    follow
        Keep reading: tail the files (a line counts once its newline is written)
        and pick up new files. The source then never ends.
    encoding
        Text encoding of the files (UTF-8 or an ASCII-compatible one).

    Types are inferred from the first chunk of each file and kept for the later
    chunks. A line that is not a JSON object is a bad record naming file and
    line (see ``on_error`` of ``flow.source``). A missing path raises
    :class:`~sluice.errors.ConfigError` at once.

    >>> import pathlib, tempfile
    >>> import sluice as sl
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.jsonl").write_text('{"user": "a", "ts": 1}\\n{"user": "b", "ts": 2}\\n')
    >>> flow, out = sl.Flow("read"), sl.sinks.collect()
    >>> flow.source(sl.sources.jsonl(d), time="ts").sink(out)
    >>> _ = flow.run()
    >>> out.to_polars()["user"].to_list()
    ['a', 'b']
    """
    return JsonlSource(path, follow=follow, encoding=encoding)


def csv(
    path: str | os.PathLike[str],
    *,
    follow: bool = False,
    has_header: bool = True,
    separator: str = ",",
    encoding: str = "utf-8",
) -> CsvSource:
    """Read CSV files.

    Parameters
    ----------
    path
        A file, a directory (its ``.csv`` / ``.tsv`` files, by name) or a glob.
    follow
        Keep reading: tail the files and pick up new ones (never ends).
    has_header
        Whether the first record names the columns (otherwise Polars' default
        names ``column_0``, ``column_1``, ... are used).
    separator
        Field separator, one character.
    encoding
        Text encoding of the files (UTF-8 or an ASCII-compatible one).

    Quoted fields may contain separators, doubled quotes and newlines; a
    record's line number is the line where it starts. Types are inferred from
    the first chunk of each file; timestamps stay strings until the engine
    parses the ``time=`` column.

    >>> import pathlib, tempfile
    >>> import sluice as sl
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.csv").write_text("user,n\\na,1\\nb,2\\n")
    >>> flow, out = sl.Flow("read"), sl.sinks.collect()
    >>> flow.source(sl.sources.csv(d / "a.csv")).sink(out)
    >>> _ = flow.run()
    >>> out.rows()
    [{'user': 'a', 'n': 1}, {'user': 'b', 'n': 2}]
    """
    return CsvSource(
        path, follow=follow, has_header=has_header, separator=separator, encoding=encoding
    )


def parquet(
    path: str | os.PathLike[str], *, follow: bool = False, columns: list[str] | None = None
) -> ParquetSource:
    """Read Parquet files, record batch by record batch.

    Parameters
    ----------
    path
        A file, a directory (its ``.parquet`` / ``.pq`` files, by name) or a glob.
    follow
        Pick up new files as they appear (never ends). A file that cannot be
        opened yet (still being written) is retried until it stops changing.
    columns
        Read only these columns (the others are never decoded): much faster
        when a job needs few columns of a wide file.

    In errors, the ``line`` of a record is its 0-based row number in the file.

    >>> import pathlib, tempfile
    >>> import polars as pl
    >>> import sluice as sl
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> pl.DataFrame({"x": [1, 2, 3]}).write_parquet(d / "a.parquet")
    >>> flow, out = sl.Flow("read"), sl.sinks.collect()
    >>> flow.source(sl.sources.parquet(d)).sink(out)
    >>> _ = flow.run()
    >>> out.to_polars()["x"].to_list()
    [1, 2, 3]
    """
    src = ParquetSource(path, follow=follow)
    if columns is not None:
        if isinstance(columns, str) or not columns:
            raise ConfigError(f"parquet source: columns must be a non-empty list, got {columns!r}")
        src.columns = list(columns)
    return src


def files(
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    follow: bool = False,
    **options: Any,
) -> FileSource:
    """Read files of ``format`` (``"jsonl"``, ``"csv"`` or ``"parquet"``).

    Without ``format`` it is taken from the file name ending of ``path`` (or,
    for a directory, of the files in it). ``options`` go to :func:`jsonl`,
    :func:`csv` or :func:`parquet`.

    >>> import pathlib, tempfile
    >>> import sluice as sl
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.csv").write_text("x\\n1\\n")
    >>> sl.sources.files(d / "*.csv").format
    'csv'
    """
    fmt = _FORMAT_ALIASES.get(format.lower()) if format is not None else _guess_format(path)
    if fmt is None:
        raise ConfigError(f"files source: unknown format {format!r}; use jsonl, csv or parquet")
    if fmt == "jsonl":
        return jsonl(path, follow=follow, **options)
    if fmt == "csv":
        return csv(path, follow=follow, **options)
    return parquet(path, follow=follow, **options)


def _guess_format(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    names = [p]
    if os.path.isdir(p):
        names = [n for n in os.listdir(p) if not n.startswith((".", "_"))]
    for fmt, exts in EXTENSIONS.items():
        if any(n.lower().endswith(exts) for n in names):
            return fmt
    raise ConfigError(
        f"files source: cannot tell the format of {p!r} from file names; "
        "pass format='jsonl', 'csv' or 'parquet'"
    )


__all__ = [
    "CsvReader",
    "CsvSource",
    "FileSource",
    "JsonlReader",
    "JsonlSource",
    "ParquetReader",
    "ParquetSource",
    "csv",
    "files",
    "jsonl",
    "parquet",
]
