"""Window and dedup state on RocksDB: the same Polars tables as the memory
path, stored one row per RocksDB entry, so that state larger than memory works.

Operators stay vectorized: a batch is pre-aggregated with Polars, the stored
rows of the keys it touches are fetched with one multi-get, merged with the
same Polars code as in memory, and written back with one write batch. Row
values are pickled tuples (in the column order of the memory table); keys use
the deterministic encoding of :func:`sluice.state.rocksdb.encode_key`.

Layout (one RocksDB per operator subtask)::

    b"W" end start key     a window's row; byte order is window-end order, so
                           firing is a range scan from the first key
    b"S" key start end     sessions of a key (an index: found by key to merge)
    b"D" <W key>           windows changed since their last early firing
    b"K" key               dedup: first-seen time (8 bytes) + the key's row
    b"T" expiry key        dedup: expiry index, in time order
    b"C" key               count windows: the key, its row count and its open
                           panes, one entry per key (a key's panes are few)

Times are int64 + 2**63, big-endian: unsigned byte order is time order.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl

from sluice.state.backends import PICKLE_PROTOCOL
from sluice.state.rocksdb import RocksDBStateBackend, encode_key

_U64 = struct.Struct(">Q")
_BIAS = 1 << 63
#: Rows per chunk of a scan (bounds the memory of firing and snapshots).
CHUNK = 65_536
WS, WE, DIRTY, FIRST = "__ws", "__we", "__dirty", "__first"
#: Column of a frame read from the store: each row's RocksDB key.
WKEY = "__wkey"


def _t(t: int) -> bytes:
    return _U64.pack(t + _BIAS)


def _time_at(buf: bytes, pos: int) -> int:
    return int(_U64.unpack_from(buf, pos)[0]) - _BIAS


def _encodable(s: pl.Series) -> pl.Series:
    """A key column as values :func:`encode_key` takes (equal keys, equal bytes)."""
    dt = s.dtype
    if dt.is_temporal():
        return s.to_physical()
    if dt in (pl.Categorical, pl.Enum) or isinstance(dt, pl.Categorical | pl.Enum):
        return s.cast(pl.String)
    return s


def key_bytes(df: pl.DataFrame, keys: Sequence[str]) -> list[bytes]:
    """The encoded key of every row of ``df``: :func:`encode_key` of the key
    (a tuple for several columns), or, when every key column is an integer (or
    a time), a tag byte ``0x80`` (no :func:`encode_key` output starts with
    it) followed by each value as 8 bytes big-endian, built with NumPy.

    >>> key_bytes(pl.DataFrame({"k": ["a", "b"]}), ["k"])
    [b'\\x05\\x01a', b'\\x05\\x01b']
    >>> key_bytes(pl.DataFrame({"k": [1]}), ["k"])
    [b'\\x80\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01']
    """
    if not keys:
        return [encode_key(())] * df.height
    series = [_encodable(df.get_column(k)) for k in keys]
    fast = _int_key_bytes(series)
    if fast is not None:
        return fast
    cols = [s.to_list() for s in series]
    if len(cols) == 1:
        return [encode_key(v) for v in cols[0]]
    return [encode_key(t) for t in zip(*cols, strict=True)]


def _int_key_bytes(series: list[pl.Series]) -> list[bytes] | None:
    if not all(s.dtype.is_integer() and s.null_count() == 0 for s in series):
        return None
    try:
        cols = [s.cast(pl.Int64, strict=True).to_numpy() for s in series]
    except pl.exceptions.PolarsError:
        return None  # a UInt64 beyond int64
    width = 8 * len(cols)
    buf = np.column_stack(cols).astype(">i8").tobytes()
    return [b"\x80" + buf[i : i + width] for i in range(0, len(buf), width)]


class RowCodec:
    """Rows of one table as pickled tuples; the schema is learned from the first
    frame (and from a restored snapshot)."""

    def __init__(self) -> None:
        self.schema: pl.Schema | None = None

    def learn(self, df: pl.DataFrame) -> None:
        if self.schema is None:
            self.schema = df.schema

    def encode(self, df: pl.DataFrame) -> list[bytes]:
        assert self.schema is not None
        if df.columns != self.schema.names():
            df = df.select(self.schema.names())
        return [pickle.dumps(r, PICKLE_PROTOCOL) for r in df.iter_rows()]

    def decode(self, blobs: Sequence[bytes]) -> pl.DataFrame:
        assert self.schema is not None
        rows = [pickle.loads(b) for b in blobs]
        return pl.DataFrame(rows, schema=self.schema, orient="row")


class _Store:
    def __init__(self, backend: RocksDBStateBackend, keys: list[str]) -> None:
        self.backend = backend
        self.db = backend.db
        self.keys = keys

    def _prefix(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        it = self.db.iter(self.backend.scan_opts)
        try:
            it.seek(start or prefix)
            while it.valid():
                k = it.key()
                if not k.startswith(prefix):
                    break
                yield k, it.value()
                it.next()
        finally:
            del it

    def _get(self, keys: list[bytes]) -> list[bytes | None]:
        """Multi-get: the values of ``keys`` (None where absent)."""
        return self.db.get(keys)  # type: ignore[arg-type,return-value]

    def _write(self, wb: Any) -> None:
        if not wb.is_empty():
            self.db.write(wb)


class RocksWindowStore(_Store):
    """The rows of a window operator's state table (one per key and window).

    ``sessions`` keeps the by-key index used to merge sessions; ``track_dirty``
    the index of windows changed since their last early firing.
    """

    def __init__(
        self,
        backend: RocksDBStateBackend,
        keys: list[str],
        *,
        sessions: bool = False,
        track_dirty: bool = False,
    ) -> None:
        super().__init__(backend, keys)
        self.sessions = sessions
        self.track_dirty = track_dirty
        self.codec = RowCodec()

    def _wkeys(self, df: pl.DataFrame) -> list[bytes]:
        if WKEY in df.columns:
            return df.get_column(WKEY).to_list()
        kbs = key_bytes(df, self.keys)
        times = np.column_stack(
            [df.get_column(WE).to_numpy(), df.get_column(WS).to_numpy()]
        ).astype(np.int64)
        buf = (times.view(np.uint64) ^ np.uint64(_BIAS)).astype(">u8").tobytes()
        return [b"W" + buf[16 * i : 16 * i + 16] + kb for i, kb in enumerate(kbs)]

    def _rows(self, wkeys: list[bytes]) -> pl.DataFrame | None:
        if not wkeys or self.codec.schema is None:
            return None
        hits = [(k, v) for k, v in zip(wkeys, self._get(wkeys), strict=True) if v is not None]
        if not hits:
            return None
        return self._decode([k for k, _ in hits], [v for _, v in hits])

    def _decode(self, wkeys: list[bytes], blobs: list[bytes]) -> pl.DataFrame:
        df = self.codec.decode(blobs)
        return df.with_columns(pl.Series(WKEY, wkeys, dtype=pl.Binary))

    def get(self, df: pl.DataFrame) -> pl.DataFrame | None:
        """The stored rows of the windows (key, start, end) of ``df``."""
        return self._rows(self._wkeys(df))

    def sessions_of(self, keys: pl.DataFrame) -> pl.DataFrame | None:
        """Every stored window of the keys of ``keys`` (found through the index)."""
        wkeys = []
        for kb in set(key_bytes(keys, self.keys)):
            p = b"S" + kb
            for k, _ in self._prefix(p):
                wkeys.append(b"W" + k[-8:] + k[-16:-8] + kb)
        return self._rows(wkeys)

    def put(self, df: pl.DataFrame) -> None:
        """Insert or replace the rows of ``df`` (the memory table's columns)."""
        if df.height == 0:
            return
        from rocksdict import WriteBatch

        if WKEY not in df.columns:
            self.codec.learn(df)
        wkeys = self._wkeys(df)
        wb = WriteBatch(raw_mode=True)
        for k, v in zip(wkeys, self.codec.encode(df), strict=True):
            wb.put(k, v)
        if self.sessions:
            for k in wkeys:
                wb.put(b"S" + k[17:] + k[9:17] + k[1:9], b"")
        if self.track_dirty:
            for k, d in zip(wkeys, df.get_column(DIRTY).to_list(), strict=True):
                if d:
                    wb.put(b"D" + k, b"")
                else:
                    wb.delete(b"D" + k)
        self._write(wb)

    def delete(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        for k in self._wkeys(df):
            wb.delete(k)
            if self.sessions:
                wb.delete(b"S" + k[17:] + k[9:17] + k[1:9])
            if self.track_dirty:
                wb.delete(b"D" + k)
        self._write(wb)

    def scan(self, upto_end: int | None = None) -> Iterator[pl.DataFrame]:
        """Rows in window-end order, in chunks; only windows with end <= ``upto_end``
        when given. Writes made meanwhile are not seen (the iterator's snapshot)."""
        if self.codec.schema is None:
            return
        wkeys: list[bytes] = []
        blobs: list[bytes] = []
        for k, v in self._prefix(b"W"):
            if upto_end is not None and _time_at(k, 1) > upto_end:
                break
            wkeys.append(k)
            blobs.append(v)
            if len(blobs) >= CHUNK:
                yield self._decode(wkeys, blobs)
                wkeys, blobs = [], []
        if blobs:
            yield self._decode(wkeys, blobs)

    def first_end(self, after: int | None = None) -> int | None:
        """The smallest window end (greater than ``after`` when given)."""
        start = None if after is None or after == (1 << 63) - 1 else b"W" + _t(after + 1)
        for k, _ in self._prefix(b"W", start):
            return _time_at(k, 1)
        return None

    def dirty(self) -> Iterator[pl.DataFrame]:
        """The windows changed since their last early firing, in chunks."""
        wkeys: list[bytes] = []
        for k, _ in self._prefix(b"D"):
            wkeys.append(k[1:])
            if len(wkeys) >= CHUNK:
                rows = self._rows(wkeys)
                if rows is not None:
                    yield rows
                wkeys = []
        rows = self._rows(wkeys)
        if rows is not None:
            yield rows

    def table(self) -> pl.DataFrame | None:
        """All rows, as the memory table (for snapshots)."""
        frames = [f.drop(WKEY) for f in self.scan()]
        if not frames:
            return None
        return pl.concat(frames) if len(frames) > 1 else frames[0]

    def restore(self, df: pl.DataFrame) -> None:
        self.codec.schema = None
        self.codec.learn(df)
        for off in range(0, df.height, CHUNK):
            self.put(df.slice(off, CHUNK))


class RocksDedupStore(_Store):
    """Per key, the time of its kept first occurrence; expires by time."""

    def __init__(self, backend: RocksDBStateBackend, keys: list[str], within: int) -> None:
        super().__init__(backend, keys)
        self.within = within
        self.key_schema: pl.Schema | None = None

    def _key_rows(self, kbs: list[bytes], blobs: list[bytes]) -> pl.DataFrame:
        assert self.key_schema is not None
        firsts = [_time_at(b, 0) for b in blobs]
        rows = [pickle.loads(memoryview(b)[8:]) for b in blobs]
        df = pl.DataFrame(rows, schema=self.key_schema, orient="row")
        return df.with_columns(pl.Series(FIRST, firsts, dtype=pl.Int64))

    def lookup(self, keys: pl.DataFrame) -> pl.DataFrame | None:
        """``keys`` columns + ``__first`` of the stored keys among ``keys`` (unique rows)."""
        if self.key_schema is None or keys.height == 0:
            return None
        kbs = key_bytes(keys, self.keys)
        vals = self._get([b"K" + kb for kb in kbs])
        hits = [(kb, v) for kb, v in zip(kbs, vals, strict=True) if v is not None]
        if not hits:
            return None
        return self._key_rows([kb for kb, _ in hits], [v for _, v in hits])

    def put(self, df: pl.DataFrame) -> None:
        """Store ``keys`` + ``__first`` rows (replacing the keys' earlier times)."""
        if df.height == 0:
            return
        from rocksdict import WriteBatch

        keys = df.select(self.keys)
        if self.key_schema is None:
            self.key_schema = keys.schema
        kbs = key_bytes(keys, self.keys)
        wb = WriteBatch(raw_mode=True)
        firsts = df.get_column(FIRST).to_list()
        for kb, first, row in zip(kbs, firsts, keys.iter_rows(), strict=True):
            wb.put(b"K" + kb, _t(first) + pickle.dumps(row, PICKLE_PROTOCOL))
            wb.put(b"T" + _t(min(first + self.within, (1 << 63) - 1)) + kb, b"")
        self._write(wb)

    def expire(self, time: int) -> int:
        """Forget the keys whose first occurrence is ``within`` or more before ``time``."""
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        kbs = []
        for k, _ in self._prefix(b"T"):
            if _time_at(k, 1) > time:
                break
            wb.delete(k)
            kbs.append(k[9:])
        if not kbs:
            return 0
        n = 0
        # a key seen again later has a newer time (and expiry entry): keep it
        for kb, v in zip(kbs, self._get([b"K" + kb for kb in kbs]), strict=True):
            if v is not None and _time_at(v, 0) + self.within <= time:
                wb.delete(b"K" + kb)
                n += 1
        self._write(wb)
        return n

    def table(self) -> pl.DataFrame | None:
        if self.key_schema is None:
            return None
        frames = []
        kbs: list[bytes] = []
        blobs: list[bytes] = []
        for k, v in self._prefix(b"K"):
            kbs.append(k[1:])
            blobs.append(v)
            if len(blobs) >= CHUNK:
                frames.append(self._key_rows(kbs, blobs))
                kbs, blobs = [], []
        if blobs:
            frames.append(self._key_rows(kbs, blobs))
        if not frames:
            return None
        return pl.concat(frames) if len(frames) > 1 else frames[0]

    def restore(self, df: pl.DataFrame) -> None:
        self.key_schema = df.select(self.keys).schema
        for off in range(0, df.height, CHUNK):
            self.put(df.slice(off, CHUNK))


#: Column of the count-window tables: rows of the key seen so far.
BASE = "__base"


class RocksCountStore(_Store):
    """Count-window state (:mod:`sluice.operators.count_windows`): per key one
    entry holding the key's row count and its open panes (pane partials of the
    rows of windows not fired yet), so a batch reads and writes only its keys.

    The frames in and out are the memory path's tables: ``counts`` (key columns
    + ``__base``) and ``panes`` (key columns, pane number, partials).
    """

    def __init__(self, backend: RocksDBStateBackend, keys: list[str]) -> None:
        super().__init__(backend, keys)
        self.key_schema: pl.Schema | None = None
        self.pane_schema: pl.Schema | None = None

    def learn(self, panes: pl.DataFrame | None, counts: pl.DataFrame) -> None:
        if self.key_schema is None:
            self.key_schema = counts.select(self.keys).schema
        if self.pane_schema is None and panes is not None and panes.height:
            self.pane_schema = panes.schema

    def _rest(self) -> list[str]:
        assert self.pane_schema is not None
        return [c for c in self.pane_schema.names() if c not in self.keys]

    def get(self, keys: pl.DataFrame) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
        """``(panes, counts)`` of the stored keys among ``keys`` (unique rows);
        None for a table without rows."""
        if self.key_schema is None or keys.height == 0:
            return None, None
        vals = self._get([b"C" + kb for kb in key_bytes(keys, self.keys)])
        return self._decode([v for v in vals if v is not None])

    def _decode(self, blobs: list[bytes]) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
        if not blobs:
            return None, None
        assert self.key_schema is not None
        key_rows: list[tuple[Any, ...]] = []
        bases: list[int] = []
        pane_rows: list[tuple[Any, ...]] = []
        for b in blobs:
            key, base, panes = pickle.loads(b)
            key_rows.append(key)
            bases.append(base)
            pane_rows.extend(key + p for p in panes)
        counts = pl.DataFrame(key_rows, schema=self.key_schema, orient="row").with_columns(
            pl.Series(BASE, bases, dtype=pl.Int64)
        )
        if not pane_rows:
            return None, counts
        assert self.pane_schema is not None
        order = [*self.keys, *self._rest()]
        schema = pl.Schema({c: self.pane_schema[c] for c in order})
        panes = pl.DataFrame(pane_rows, schema=schema, orient="row")
        return panes.select(self.pane_schema.names()), counts

    def put(self, panes: pl.DataFrame | None, counts: pl.DataFrame) -> None:
        """Replace the state of every key of ``counts`` by its count there and its
        rows of ``panes`` (a key without rows in ``panes`` has no open pane)."""
        if counts.height == 0:
            return
        self.learn(panes, counts)
        by_key: dict[bytes, list[tuple[Any, ...]]] = {}
        if panes is not None and panes.height:
            rows = panes.select(self._rest()).iter_rows()
            for kb, row in zip(key_bytes(panes, self.keys), rows, strict=True):
                by_key.setdefault(kb, []).append(row)
        self._put_counts(counts, by_key)

    def _put_counts(self, counts: pl.DataFrame, by_key: dict[bytes, list[tuple[Any, ...]]]) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        kbs = key_bytes(counts, self.keys)
        keys = counts.select(self.keys).iter_rows()
        bases = counts.get_column(BASE).to_list()
        for kb, key, base in zip(kbs, keys, bases, strict=True):
            value = (key, base, by_key.get(kb, []))
            wb.put(b"C" + kb, pickle.dumps(value, PICKLE_PROTOCOL))
        self._write(wb)

    def tables(self) -> dict[str, pl.DataFrame]:
        """Every key's state as the memory path's ``panes`` and ``counts`` tables."""
        if self.key_schema is None:
            return {}
        panes: list[pl.DataFrame] = []
        counts: list[pl.DataFrame] = []
        blobs: list[bytes] = []

        def flush() -> None:
            p, c = self._decode(blobs)
            if p is not None:
                panes.append(p)
            if c is not None:
                counts.append(c)
            blobs.clear()

        for _, v in self._prefix(b"C"):
            blobs.append(v)
            if len(blobs) >= CHUNK:
                flush()
        flush()
        out = {}
        if panes:
            out["panes"] = pl.concat(panes) if len(panes) > 1 else panes[0]
        if counts:
            out["counts"] = pl.concat(counts) if len(counts) > 1 else counts[0]
        return out

    def restore(self, panes: pl.DataFrame | None, counts: pl.DataFrame) -> None:
        self.key_schema = self.pane_schema = None
        self.learn(panes, counts)
        by_key: dict[bytes, list[tuple[Any, ...]]] = {}
        if panes is not None and panes.height:
            for off in range(0, panes.height, CHUNK):
                chunk = panes.slice(off, CHUNK)
                rows = chunk.select(self._rest()).iter_rows()
                for kb, row in zip(key_bytes(chunk, self.keys), rows, strict=True):
                    by_key.setdefault(kb, []).append(row)
        for off in range(0, counts.height, CHUNK):
            self._put_counts(counts.slice(off, CHUNK), by_key)


__all__ = [
    "BASE",
    "CHUNK",
    "WKEY",
    "RocksCountStore",
    "RocksDedupStore",
    "RocksWindowStore",
    "RowCodec",
    "key_bytes",
]
