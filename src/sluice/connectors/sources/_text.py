"""Line-oriented file readers (JSON Lines and CSV) behind the file sources.

A reader hands out complete lines a chunk at a time, parses them with Polars
and falls back to line-by-line checks when a chunk does not parse, so that only
the bad lines are reported. Its position (byte offset, line number and what it
learnt from the file's start: the CSV header, the column types) is a small
JSON-serializable dict, so that a checkpointed job resumes a file exactly where
it stopped.
"""

from __future__ import annotations

import codecs
import contextlib
import csv as _csv
import json
import os
import time
from typing import Any, BinaryIO

import numpy as np
import polars as pl

from sluice.connectors.base import ReadBatch, ReaderContext, SplitReader
from sluice.connectors.sources._dtypes import schema_from_json, schema_to_json
from sluice.errors import ConfigError

_BLOCK = 1 << 20
#: A poll stops reading once this much is buffered (unless no line is complete yet).
_MAX_POLL_BYTES = 64 << 20
#: Follow mode: how often a file that was read to its end is checked for growth.
RECHECK_S = 0.1
_BOM = b"\xef\xbb\xbf"


# -- text files: line reading shared by JSONL and CSV -----------------------------------
class _TextReader(SplitReader):
    """Hands out complete lines of a text file, a chunk at a time."""

    def __init__(self, path: str, *, follow: bool, encoding: str) -> None:
        self.split_id = path
        self.path = path
        self.follow = follow
        self.encoding = encoding
        self._transcode = codecs.lookup(encoding).name not in ("utf-8", "utf-8-sig")
        self._fh: BinaryIO | None = None
        self._read = 0  # bytes read from the file
        self._pending = b""  # bytes read but not yet handed out (an incomplete line)
        self._line = 0  # lines handed out so far
        self._eof = False
        self._next_check = 0.0
        self._ctx = ReaderContext("file")

    def open(self, ctx: ReaderContext) -> None:
        self._ctx = ctx

    def position(self) -> int:
        """Byte offset up to which the file has been consumed (for checkpoints)."""
        return self._read - len(self._pending) - self._held()[0]

    def _held(self) -> tuple[int, int]:
        """Bytes and lines handed out but held back by a subclass (a CSV record in
        progress); a checkpoint records the position before them."""
        return 0, 0

    def snapshot(self) -> dict[str, Any]:
        """``{"offset": bytes consumed, "line": lines consumed}``, plus what a
        subclass learnt from the start of the file."""
        return {"offset": self.position(), "line": self._line - self._held()[1]}

    def restore(self, state: dict[str, Any]) -> None:
        offset, line = int(state["offset"]), int(state["line"])
        try:
            size: int | None = os.path.getsize(self.path)
        except FileNotFoundError:
            size = None
        if (size is None and not self.follow) or (size is not None and size < offset):
            now = "is missing" if size is None else f"has only {size} bytes"
            raise ConfigError(
                f"{self._ctx.source_name} source: cannot resume {self.path!r} at byte "
                f"{offset}: the file {now}; was it replaced or truncated after the checkpoint?"
            )
        self._close_file()
        self._read, self._pending, self._line = offset, b"", line
        self._eof = self.finished = False
        self._next_check = 0.0

    def _file(self) -> BinaryIO | None:
        if self._fh is not None:
            return self._fh
        if self.follow:
            now = time.monotonic()
            if now < self._next_check:
                return None
            self._next_check = now + RECHECK_S
            try:
                if os.stat(self.path).st_size <= self._read:
                    return None
            except FileNotFoundError:
                return None
        fh = open(self.path, "rb")  # noqa: SIM115 - kept open across polls
        fh.seek(self._read)
        self._fh = fh
        return fh

    def _fill(self, want_lines: int) -> bool:
        """Read until ``want_lines`` lines are pending; True if the file end was reached."""
        fh = self._file()
        if fh is None:
            return True
        have = self._pending.count(b"\n")
        chunks = [self._pending]
        size = len(self._pending)
        while have < want_lines and (size < _MAX_POLL_BYTES or have == 0):
            block = fh.read(_BLOCK)
            if not block:
                if self.follow:
                    self._close_file()
                    self._next_check = time.monotonic() + RECHECK_S
                self._pending = b"".join(chunks)
                return True
            if self._read == 0 and block.startswith(_BOM):
                block = block[len(_BOM) :]
                self._read += len(_BOM)
            self._read += len(block)
            chunks.append(block)
            size += len(block)
            have += block.count(b"\n")
        self._pending = b"".join(chunks)
        return False

    def _take_block(self, max_rows: int) -> tuple[bytes, int, int]:
        """Up to ``max_rows`` complete lines as one block (joined by newlines, without
        the last one), how many lines it holds, and the number of its first line."""
        max_rows = max(1, max_rows)
        at_end = self._fill(max_rows)
        buf = self._pending
        nl = buf.count(b"\n")
        if nl > max_rows:
            pos = int(np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 10)[max_rows - 1])
            n = max_rows
        elif nl:
            pos = buf.rfind(b"\n")
            n = nl
        else:
            pos, n = -1, 0
        block, self._pending = (buf[:pos], buf[pos + 1 :]) if n else (b"", buf)
        if at_end and not self.follow and n < max_rows:
            if self._pending:  # a bounded file's last line needs no newline
                block = block + b"\n" + self._pending if n else self._pending
                n += 1
                self._pending = b""
            self._eof = True
        first = self._line + 1
        self._line += n
        return block, n, first

    def _decode(self, data: bytes) -> bytes | None:
        """``data`` as UTF-8 for Polars (``None`` if not valid in the file's encoding).
        UTF-8 input is passed through: Polars rejects invalid bytes itself."""
        if not self._transcode:
            return data
        try:
            return data.decode(self.encoding).encode("utf-8")
        except UnicodeDecodeError:
            return None

    def _raw(self, line: bytes) -> str:
        return line.decode(self.encoding, errors="replace")

    def _bad(self, reason: str, line: int, raw: bytes | None) -> None:
        self._ctx.bad_record(
            reason, file=self.path, line=line, raw=None if raw is None else self._raw(raw)
        )

    def _close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _finish_if_done(self) -> None:
        if self._eof:
            self.finished = True
            self._close_file()

    def close(self) -> None:
        self._close_file()


def _may_have_blank(block: bytes) -> bool:
    """False if no line of ``block`` can be empty or whitespace-only (cheap scan)."""
    return (
        not block
        or block[0] in b" \t\r\n"
        or block.endswith(b"\n")
        or any(p in block for p in (b"\n\n", b"\n\r", b"\n ", b"\n\t"))
    )


def _learn(schema: dict[str, pl.DataType], df: pl.DataFrame) -> None:
    """Remember the (non-null) type of every column not seen before."""
    for c, dt in df.schema.items():
        if c not in schema and dt != pl.Null:
            schema[c] = dt


class JsonlReader(_TextReader):
    """Reads one JSON Lines file; blank lines are skipped, line numbers are 1-based."""

    def __init__(self, path: str, *, follow: bool = False, encoding: str = "utf-8") -> None:
        super().__init__(path, follow=follow, encoding=encoding)
        #: Column types learnt from the first chunk; later chunks are parsed with them.
        self.schema: dict[str, pl.DataType] = {}

    def snapshot(self) -> dict[str, Any]:
        """Adds the column types learnt so far."""
        return {**super().snapshot(), "schema": schema_to_json(self.schema)}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.schema = schema_from_json(state.get("schema", []))

    def poll(self, max_rows: int) -> ReadBatch | None:
        if self.finished:
            return None
        block, n, first = self._take_block(max_rows)
        self._finish_if_done()
        if n == 0:
            return None
        if _may_have_blank(block):
            lines = block.split(b"\n")
            keep = [i for i, ln in enumerate(lines) if ln and not ln.isspace()]
            if not keep:
                return None
            block = b"\n".join(lines[i] for i in keep)
            numbers = np.asarray(keep, dtype=np.int64) + first
        else:
            numbers = np.arange(first, first + n, dtype=np.int64)
        df, numbers = self._frame(block, numbers)
        if df.height == 0:
            return None
        return ReadBatch(df, self.path, first_line=int(numbers[0]), lines=numbers)

    def _frame(self, data: bytes, numbers: np.ndarray) -> tuple[pl.DataFrame, np.ndarray]:
        df = self._parse(data)
        if df is not None and df.height == len(numbers):
            return df, numbers
        # Slow path: find the lines that are not JSON objects, report them, keep the rest.
        lines = data.split(b"\n")
        good: list[int] = []
        for i, ln in enumerate(lines):
            reason = _json_problem(ln, self.encoding)
            if reason is None:
                good.append(i)
            else:
                self._bad(reason, int(numbers[i]), ln)
        lines = [lines[i] for i in good]
        numbers = numbers[good]
        if not lines:
            return pl.DataFrame(), numbers
        df = self._parse(b"\n".join(lines))
        if df is not None and df.height == len(lines):
            return df, numbers
        return self._per_line(lines, numbers)

    def _parse(self, data: bytes) -> pl.DataFrame | None:
        utf8 = self._decode(data)
        if utf8 is None:
            return None
        # Types are inferred from all rows (a shorter inference would drop keys
        # that first appear later); columns whose type differs from the first
        # chunk's (all-null, whole numbers in a float column) are parsed again
        # with the known types.
        try:
            df = pl.read_ndjson(utf8, infer_schema_length=None)
        except Exception:
            return None
        retype = {c: self.schema[c] for c, t in df.schema.items() if self.schema.get(c, t) != t}
        if retype:
            # If the values do not fit, keep the inferred types: the engine checks
            # them against its schema and names the bad lines.
            with contextlib.suppress(Exception):
                df = pl.read_ndjson(utf8, schema_overrides=retype, infer_schema_length=None)
        _learn(self.schema, df)
        return df

    def _per_line(self, lines: list[bytes], numbers: np.ndarray) -> tuple[pl.DataFrame, np.ndarray]:
        """Last resort (types that conflict within one chunk): parse line by line
        with the types seen so far and report the lines that do not fit them."""
        frames: list[pl.DataFrame] = []
        good: list[int] = []
        for i, ln in enumerate(lines):
            utf8 = self._decode(ln)
            assert utf8 is not None  # checked by _json_problem
            present = {c: t for c, t in self.schema.items() if b'"' + c.encode() + b'"' in utf8}
            try:
                one = pl.read_ndjson(utf8, schema_overrides=present, infer_schema_length=None)
            except Exception as e:
                types = ", ".join(f"{c}: {t}" for c, t in present.items())
                self._bad(
                    f"the record does not fit the types of earlier records ({types}): {e}",
                    int(numbers[i]),
                    ln,
                )
                continue
            _learn(self.schema, one)
            frames.append(one)
            good.append(i)
        if not frames:
            return pl.DataFrame(), numbers[good]
        return pl.concat(frames, how="diagonal_relaxed"), numbers[good]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_problem(line: bytes, encoding: str) -> str | None:
    """Why ``line`` is not one JSON object, or ``None`` if it is."""
    try:
        text = line.decode(encoding)
    except UnicodeDecodeError as e:
        return f"not valid {encoding} text ({e.reason} at byte {e.start})"
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        return f"invalid JSON: {e.msg} at column {e.colno}"
    except ValueError as e:
        return f"invalid JSON: {e}"
    if not isinstance(obj, dict):
        kind = "null" if obj is None else type(obj).__name__
        return f"expected a JSON object per line, got {kind}"
    return None


#: Rows used to infer a CSV chunk's types; on a type conflict all rows are used.
_CSV_INFER_ROWS = 1000


class CsvReader(_TextReader):
    """Reads one CSV file. A record is one line, or several when a quoted field
    holds newlines; its reported line is the (1-based) line where it starts.
    Empty lines are skipped."""

    def __init__(
        self,
        path: str,
        *,
        follow: bool = False,
        has_header: bool = True,
        separator: str = ",",
        encoding: str = "utf-8",
    ) -> None:
        super().__init__(path, follow=follow, encoding=encoding)
        self.has_header = has_header
        self.separator = separator
        self._quote = b'"'
        self._header: bytes | None = None
        self._width: int | None = None
        self._carry = b""  # the lines of a record whose quoted field is still open
        self._carry_lines = 0
        self._carry_first = 0
        #: Column types learnt from the first chunk; later chunks are parsed with them.
        self.schema: dict[str, pl.DataType] = {}

    def _held(self) -> tuple[int, int]:
        return (len(self._carry) + 1, self._carry_lines) if self._carry_lines else (0, 0)

    def snapshot(self) -> dict[str, Any]:
        """Adds the header record (text) and the column types learnt so far."""
        state = super().snapshot()
        if self._header is not None:
            state["header"] = self._header.decode(self.encoding, "surrogateescape")
        state["schema"] = schema_to_json(self.schema)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self._carry, self._carry_lines = b"", 0
        header = state.get("header")
        if header is None:
            self._header, self._width = None, None
        else:
            self._set_header(header.encode(self.encoding, "surrogateescape"))
        self.schema = schema_from_json(state.get("schema", []))

    def poll(self, max_rows: int) -> ReadBatch | None:
        if self.finished:
            return None
        block, n, first = self._take_block(max_rows)
        if self._carry_lines:
            block = self._carry + b"\n" + block if n else self._carry
            n += self._carry_lines
            first = self._carry_first
            self._carry, self._carry_lines = b"", 0
        if n == 0:
            self._finish_if_done()
            return None
        records: list[bytes] | None = None
        if self._quote not in block and not _may_have_blank(block):
            # Fast path: one record per line.
            data, numbers = block, np.arange(first, first + n, dtype=np.int64)
            if self.has_header and self._header is None:
                head, _, data = block.partition(b"\n")
                self._set_header(head)
                numbers = numbers[1:]
        else:
            records, starts = self._records(block.split(b"\n"), first)
            if self.has_header and self._header is None and records:
                self._set_header(records.pop(0))
                starts.pop(0)
            data = b"\n".join(records)
            numbers = np.asarray(starts, dtype=np.int64)
        self._finish_if_done()
        if len(numbers) == 0:
            return None
        df, numbers = self._frame(data, records, numbers)
        if df.height == 0:
            return None
        return ReadBatch(df, self.path, first_line=int(numbers[0]), lines=numbers)

    def _set_header(self, header: bytes) -> None:
        self._header = header
        self._width = self._count_fields(header)

    def _records(self, lines: list[bytes], first: int) -> tuple[list[bytes], list[int]]:
        """Group lines into records (quote-aware), drop empty lines, keep an unfinished one."""
        q = self._quote
        records: list[bytes] = []
        starts: list[int] = []
        cur: list[bytes] = []
        start = first
        open_quotes = False
        for i, ln in enumerate(lines):
            if not cur:
                if not ln or ln == b"\r":
                    continue
                start = first + i
            cur.append(ln)
            if ln.count(q) % 2:
                open_quotes = not open_quotes
            if not open_quotes:
                records.append(cur[0] if len(cur) == 1 else b"\n".join(cur))
                starts.append(start)
                cur = []
        if cur:
            if self._eof:  # an unterminated quote at the end of the file: let the parser say so
                records.append(b"\n".join(cur))
                starts.append(start)
            else:
                self._carry = b"\n".join(cur)
                self._carry_lines = len(cur)
                self._carry_first = start
        return records, starts

    def _count_fields(self, record: bytes) -> int | None:
        try:
            rows = list(_csv.reader([self._raw(record)], delimiter=self.separator, strict=True))
        except _csv.Error:
            return None
        return len(rows[0]) if rows else 0

    def _frame(
        self, data: bytes, records: list[bytes] | None, numbers: np.ndarray
    ) -> tuple[pl.DataFrame, np.ndarray]:
        df = self._parse(data)
        if df is not None and df.height == len(numbers):
            return df, numbers
        # Slow path: check record by record, report the bad ones, keep the rest.
        if records is None:  # no quotes in data: one record per line
            records = data.split(b"\n")
        good: list[int] = []
        width = self._width if self._width is not None else (len(self.schema) or None)
        for i, rec in enumerate(records):
            reason = self._csv_problem(rec, width)
            if reason is None:
                good.append(i)
                if width is None:
                    width = self._count_fields(rec)
            else:
                self._bad(reason, int(numbers[i]), rec)
        records = [records[i] for i in good]
        numbers = numbers[good]
        if not records:
            return pl.DataFrame(), numbers
        df = self._parse(b"\n".join(records))
        if df is not None and df.height == len(records):
            return df, numbers
        # Last resort: one record at a time.
        frames: list[pl.DataFrame] = []
        kept: list[int] = []
        for i, rec in enumerate(records):
            one = self._parse(rec)
            if one is None or one.height != 1:
                self._bad("the record cannot be parsed as CSV", int(numbers[i]), rec)
                continue
            frames.append(one)
            kept.append(i)
        if not frames:
            return pl.DataFrame(), numbers[kept]
        return pl.concat(frames, how="diagonal_relaxed"), numbers[kept]

    def _csv_problem(self, record: bytes, width: int | None) -> str | None:
        try:
            text = record.decode(self.encoding)
        except UnicodeDecodeError as e:
            return f"not valid {self.encoding} text ({e.reason} at byte {e.start})"
        try:
            rows = list(_csv.reader([text], delimiter=self.separator, strict=True))
        except _csv.Error as e:
            return f"malformed CSV: {e}"
        n = len(rows[0]) if rows else 0
        if width is not None and n > width:
            return f"expected {width} fields, found {n}"
        return None

    def _parse(self, body: bytes) -> pl.DataFrame | None:
        data = body if self._header is None else self._header + b"\n" + body
        utf8 = self._decode(data)
        if utf8 is None:
            return None
        opts: dict[str, Any] = {"has_header": self.has_header, "separator": self.separator}
        # A short type inference is safe for CSV (the columns are known and a
        # value that does not fit raises), and much faster than a full one.
        attempts: list[dict[str, Any]] = []
        if self.schema:
            attempts.append({"schema_overrides": self.schema})
        attempts += [{"infer_schema_length": _CSV_INFER_ROWS}, {"infer_schema_length": None}]
        for extra in attempts:
            try:
                df = pl.read_csv(utf8, **opts, **extra)
            except Exception:
                continue  # a type differs: infer from more rows; the engine checks types
            _learn(self.schema, df)
            return df
        return None
