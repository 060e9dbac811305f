"""The RocksDB state backend: keyed state on local disk, for state larger than memory.

Every cell is one RocksDB entry (``rocksdict`` in raw mode), so memory use does
not grow with the number of keys: RocksDB keeps a bounded block cache and write
buffers, the rest is on disk.

Layout of the RocksDB keys (all parts self-delimiting, see :func:`encode_key`)::

    b"v" name key                value state: one entry per key
    b"l" name key seq(8 bytes)   list state: one entry per element, in order
    b"m" name key map_key        map state: one entry per map entry
    b"E" / b"P" time key         event / processing-time timers, in time order

and of the values: a header (``0x00``, or ``0x01`` followed by the 8-byte write
time for state with a TTL) followed by the value pickled. Keys and map keys are
restricted to ``str``, ``int``, ``float``, ``bool``, ``bytes``, ``None`` and
tuples of these, encoded deterministically (never pickled): equal keys must
give equal bytes. Note that ``1``, ``1.0`` and ``True`` are *different* keys
here, while a Python dict (the memory backend) treats them as one.

The database is a working copy of the state, deleted on close; fault tolerance
comes from checkpoints, which scan it into the same Arrow tables as the memory
backend.
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import tempfile
import weakref
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError, SluiceError
from sluice.state.backends import (
    PICKLE_PROTOCOL,
    BackendName,
    Cell,
    Expired,
    ListTable,
    MapTable,
    StateBackend,
    TimerKind,
    ValueTable,
)
from sluice.state.timers import TimerQueue

_NONE, _FALSE, _TRUE, _INT, _FLOAT, _STR, _BYTES, _TUPLE = range(8)
_F64 = struct.Struct(">d")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_LAST_SEQ = b"\xff" * 9  # sorts after every 8-byte sequence number
_TIME_BIAS = 1 << 63  # int64 time + bias: unsigned, so byte order is time order


class StateKeyError(SluiceError, TypeError):
    """A key (or map key) that the RocksDB state backend cannot encode."""


def _varint(n: int, out: bytearray) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _encode(obj: Any, out: bytearray) -> None:
    if obj is None:
        out.append(_NONE)
    elif obj is True:
        out.append(_TRUE)
    elif obj is False:
        out.append(_FALSE)
    elif isinstance(obj, int):
        raw = obj.to_bytes((obj.bit_length() + 8) // 8, "big", signed=True)
        out.append(_INT)
        _varint(len(raw), out)
        out += raw
    elif isinstance(obj, float):
        out.append(_FLOAT)
        out += _F64.pack(obj + 0.0)  # -0.0 == 0.0: one key, as in a dict
    elif isinstance(obj, str):
        raw = obj.encode("utf-8", "surrogatepass")
        out.append(_STR)
        _varint(len(raw), out)
        out += raw
    elif isinstance(obj, bytes):
        out.append(_BYTES)
        _varint(len(obj), out)
        out += obj
    elif isinstance(obj, tuple):
        out.append(_TUPLE)
        _varint(len(obj), out)
        for x in obj:
            _encode(x, out)
    else:
        raise StateKeyError(
            f"the rocksdb state backend cannot use {obj!r} (a {type(obj).__name__}) as a "
            "key or map key: use str, int, float, bool, bytes, None or tuples of these "
            "(cast the key column, e.g. .with_columns(sl.col('day').cast(str)), or use the "
            "memory backend)"
        )


def encode_key(obj: Any) -> bytes:
    """Deterministic, self-delimiting bytes of a key (no encoding is a prefix of another).

    >>> encode_key(("a", 1)).hex()
    '0702050161030101'
    >>> decode_key(encode_key(("a", 1, None, 2.5, b"x", True)))
    ('a', 1, None, 2.5, b'x', True)
    """
    out = bytearray()
    _encode(obj, out)
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def _decode(buf: bytes, pos: int) -> tuple[Any, int]:
    tag = buf[pos]
    pos += 1
    if tag == _NONE:
        return None, pos
    if tag == _TRUE:
        return True, pos
    if tag == _FALSE:
        return False, pos
    if tag == _FLOAT:
        return _F64.unpack_from(buf, pos)[0], pos + 8
    if tag in (_INT, _STR, _BYTES):
        n, pos = _read_varint(buf, pos)
        raw = buf[pos : pos + n]
        pos += n
        if tag == _INT:
            return int.from_bytes(raw, "big", signed=True), pos
        if tag == _STR:
            return raw.decode("utf-8", "surrogatepass"), pos
        return bytes(raw), pos
    if tag == _TUPLE:
        n, pos = _read_varint(buf, pos)
        items = []
        for _ in range(n):
            x, pos = _decode(buf, pos)
            items.append(x)
        return tuple(items), pos
    raise SluiceError(f"corrupt state key: unknown tag {tag} at byte {pos - 1}")


def decode_key(buf: bytes) -> Any:
    """The key :func:`encode_key` encoded."""
    obj, _ = _decode(buf, 0)
    return obj


def _cell_bytes(written: int | None, value: Any) -> bytes:
    blob = pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    return _blob_cell(written, blob)


def _blob_cell(written: int | None, blob: bytes) -> bytes:
    if written is None:
        return b"\x00" + blob
    return b"\x01" + _I64.pack(written) + blob


def _written(raw: bytes) -> int | None:
    return None if raw[0] == 0 else _I64.unpack_from(raw, 1)[0]


def _blob(raw: bytes) -> bytes:
    return raw[1:] if raw[0] == 0 else raw[9:]


def _cell(raw: bytes) -> Cell:
    return _written(raw), pickle.loads(_blob(raw))


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string starting with ``prefix``."""
    p = prefix.rstrip(b"\xff")
    return p[:-1] + bytes([p[-1] + 1])


@dataclass(frozen=True)
class RocksDBOptions:
    """Memory knobs of the RocksDB backend (per operator subtask).

    The defaults suit a laptop: RocksDB's memory stays around
    ``block_cache_bytes + write_buffer_bytes * max_write_buffers``, whatever
    the number of keys.
    """

    block_cache_bytes: int = 32 << 20
    write_buffer_bytes: int = 16 << 20
    max_write_buffers: int = 2
    max_open_files: int = 256


class _Table:
    def __init__(self, backend: RocksDBStateBackend, kind: bytes, name: str) -> None:
        self._b = backend
        self._db = backend.db
        self.prefix = kind + encode_key(name)
        self._cursor: bytes | None = None

    def _iter(self, start: bytes, *, fill_cache: bool = True) -> Any:
        it = self._db.iter(self._b.scan_opts if not fill_cache else None)
        it.seek(start)
        return it

    def _entries(self, prefix: bytes, *, fill_cache: bool = True) -> Iterator[tuple[bytes, bytes]]:
        it = self._iter(prefix, fill_cache=fill_cache)
        try:
            while it.valid():
                k = it.key()
                if not k.startswith(prefix):
                    break
                yield k, it.value()
                it.next()
        finally:
            del it

    def sweep(self, budget: int, expired: Expired) -> int:
        """Visit up to ``budget`` cells from the cursor, delete the expired ones.

        Every cell (value, list element, map entry) carries its own write time,
        so cells are checked one by one, whatever key they belong to."""
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        n = 0
        stopped_at: bytes | None = None
        for k, raw in self._entries(self._cursor or self.prefix, fill_cache=False):
            if n >= budget:
                stopped_at = k
                break
            n += 1
            if expired(_written(raw)):
                wb.delete(k)
        if not wb.is_empty():
            self._db.write(wb)
        self._cursor = stopped_at
        return n


class _Values(_Table, ValueTable):
    def get(self) -> Cell | None:
        raw = self._db.get(self.prefix + self._b.kb)
        return None if raw is None else _cell(raw)

    def put(self, written: int | None, value: Any) -> None:
        self._db.put(self.prefix + self._b.kb, _cell_bytes(written, value))

    def delete(self) -> None:
        self._db.delete(self.prefix + self._b.kb)

    def scan(self) -> Iterator[tuple[Hashable, int | None, bytes]]:
        n = len(self.prefix)
        for k, raw in self._entries(self.prefix, fill_cache=False):
            yield _decode(k, n)[0], _written(raw), _blob(raw)

    def restore(self, key: Hashable, written: int | None, blob: bytes) -> None:
        self._db.put(self.prefix + encode_key(key), _blob_cell(written, blob))


class _Lists(_Table, ListTable):
    def _next_seq(self, head: bytes) -> int:
        it = self._db.iter()
        try:
            it.seek_for_prev(head + _LAST_SEQ)
            if it.valid():
                k = it.key()
                if k.startswith(head):
                    return int(_U64.unpack_from(k, len(head))[0]) + 1
            return 0
        finally:
            del it

    def get(self) -> list[Cell]:
        return [_cell(raw) for _, raw in self._entries(self.prefix + self._b.kb)]

    def append(self, written: int | None, value: Any) -> None:
        head = self.prefix + self._b.kb
        self._db.put(head + _U64.pack(self._next_seq(head)), _cell_bytes(written, value))

    def put(self, cells: list[Cell]) -> None:
        from rocksdict import WriteBatch

        head = self.prefix + self._b.kb
        wb = WriteBatch(raw_mode=True)
        wb.delete_range(head, _prefix_end(head))
        for i, (w, v) in enumerate(cells):
            wb.put(head + _U64.pack(i), _cell_bytes(w, v))
        self._db.write(wb)

    def delete(self) -> None:
        head = self.prefix + self._b.kb
        self._db.delete_range(head, _prefix_end(head))

    def scan(self) -> Iterator[tuple[Hashable, int, int | None, bytes]]:
        n = len(self.prefix)
        last = b""
        key: Hashable = None
        pos = 0
        for k, raw in self._entries(self.prefix, fill_cache=False):
            kb = k[n:-8]
            if kb != last:
                last, key, pos = kb, _decode(k, n)[0], 0
            else:
                pos += 1
            yield key, pos, _written(raw), _blob(raw)

    def restore(self, key: Hashable, written: int | None, blob: bytes) -> None:
        head = self.prefix + encode_key(key)
        self._db.put(head + _U64.pack(self._next_seq(head)), _blob_cell(written, blob))


class _Maps(_Table, MapTable):
    def get(self, mk: Any) -> Cell | None:
        raw = self._db.get(self.prefix + self._b.kb + encode_key(mk))
        return None if raw is None else _cell(raw)

    def put(self, mk: Any, written: int | None, value: Any) -> None:
        self._db.put(self.prefix + self._b.kb + encode_key(mk), _cell_bytes(written, value))

    def delete(self, mk: Any) -> None:
        self._db.delete(self.prefix + self._b.kb + encode_key(mk))

    def entries(self) -> list[tuple[Any, Cell]]:
        head = self.prefix + self._b.kb
        n = len(head)
        return [(_decode(k, n)[0], _cell(raw)) for k, raw in self._entries(head)]

    def delete_all(self) -> None:
        head = self.prefix + self._b.kb
        self._db.delete_range(head, _prefix_end(head))

    def scan(self) -> Iterator[tuple[Hashable, Any, int | None, bytes]]:
        n = len(self.prefix)
        for k, raw in self._entries(self.prefix, fill_cache=False):
            key, end = _decode(k, n)
            yield key, _decode(k, end)[0], _written(raw), _blob(raw)

    def restore(self, key: Hashable, mk: Any, written: int | None, blob: bytes) -> None:
        self._db.put(self.prefix + encode_key(key) + encode_key(mk), _blob_cell(written, blob))


class _Timers(TimerQueue):
    """Timers as RocksDB entries ``kind time key``, with the time encoded so that
    byte order is time order."""

    def __init__(self, backend: RocksDBStateBackend, kind: bytes) -> None:
        self._db = backend.db
        self.prefix = kind
        # every live timer sorts at or after this key: seeks start here, not
        # before the tombstones of the timers already fired
        self._floor = kind

    def _key(self, time: int, key: Hashable) -> bytes:
        return self.prefix + _U64.pack(time + _TIME_BIAS) + encode_key(key)

    def add(self, time: int, key: Hashable) -> bool:
        k = self._key(time, key)
        if self._db.get(k) is not None:
            return False
        self._db.put(k, b"")
        if k < self._floor:
            self._floor = k
        return True

    def delete(self, time: int, key: Hashable) -> None:
        self._db.delete(self._key(time, key))

    def _first(self) -> tuple[bytes, int] | None:
        it = self._db.iter()
        try:
            it.seek(self._floor)
            if not it.valid():
                return None
            k = it.key()
            if not k.startswith(self.prefix):
                return None
            return k, int(_U64.unpack_from(k, len(self.prefix))[0]) - _TIME_BIAS
        finally:
            del it

    def peek_time(self) -> int | None:
        first = self._first()
        return None if first is None else first[1]

    def pop_due(self, upto: int) -> tuple[int, Hashable] | None:
        first = self._first()
        if first is None or first[1] > upto:
            return None
        k, t = first
        self._db.delete(k)
        self._floor = k
        return t, decode_key(k[len(self.prefix) + 8 :])

    def scan(self) -> Iterator[tuple[int, Hashable]]:
        n = len(self.prefix)
        it = self._db.iter()
        try:
            it.seek(self._floor)
            while it.valid():
                k = it.key()
                if not k.startswith(self.prefix):
                    break
                yield int(_U64.unpack_from(k, n)[0]) - _TIME_BIAS, decode_key(k[n + 8 :])
                it.next()
        finally:
            del it


class RocksDBStateBackend(StateBackend):
    """Keyed state in an embedded RocksDB at ``path`` (created empty; deleted on close).

    Values are pickled on every write and unpickled on every read: a value
    changed in place must be written back with ``update``/``put``.

    >>> import tempfile, os
    >>> b = RocksDBStateBackend(os.path.join(tempfile.mkdtemp(), "db"))
    >>> b.set_current_key(("a", 1))
    >>> t = b.list_table("seen"); t.append(None, "x"); t.append(5, "y"); t.get()
    [(None, 'x'), (5, 'y')]
    >>> b.close()
    """

    name: BackendName = "rocksdb"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        options: RocksDBOptions | None = None,
        remove_root: str | os.PathLike[str] | None = None,
        fresh: bool = True,
    ) -> None:
        super().__init__()
        try:
            import rocksdict
        except ImportError as e:  # pragma: no cover - depends on the installation
            raise ConfigError(
                "state_backend='rocksdb' needs the rocksdict package: pip install 'sluice[rocksdb]'"
            ) from e
        o = options or RocksDBOptions()
        self.path = Path(path)
        self._remove = Path(remove_root) if remove_root is not None else self.path
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(o.write_buffer_bytes)
        opts.set_max_write_buffer_number(o.max_write_buffers)
        opts.set_max_open_files(o.max_open_files)
        opts.set_compression_type(rocksdict.DBCompressionType.lz4())
        self._cache = rocksdict.Cache(o.block_cache_bytes)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self._cache)
        # index and filter blocks live in the (bounded) block cache, partitioned so
        # that a lookup loads a small partition, not a whole file's filter
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_pin_top_level_index_and_filter(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_metadata_block_size(4096)
        table.set_bloom_filter(10, False)
        opts.set_block_based_table_factory(table)
        self._opts = opts
        self._options = o
        if fresh:
            _clear_stale(self.path, opts)
            for old in self.path.parent.glob(f"{self.path.name}.chk-*"):
                shutil.rmtree(old, ignore_errors=True)  # copies left by a crash
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = rocksdict.Rdict(str(self.path), opts)
        wo = rocksdict.WriteOptions()
        # a working copy of the state: checkpoints make it durable, not a WAL
        wo.disable_wal = True  # type: ignore[method-assign,assignment]
        self.db.set_write_options(wo)
        self.scan_opts = rocksdict.ReadOptions()
        self.scan_opts.fill_cache(False)  # type: ignore[call-arg]
        self.kb = encode_key(None)
        self._tables: dict[tuple[bytes, str], _Table] = {}
        self._timers: dict[TimerKind, _Timers] = {}
        self._closed = False
        if remove_root is not None:
            # a temporary directory goes even if the job dies without closing us
            weakref.finalize(self, shutil.rmtree, str(self._remove), True)

    @classmethod
    def for_subtask(
        cls,
        state_dir: str | os.PathLike[str] | None,
        operator: str,
        subtask: int,
        *,
        options: RocksDBOptions | None = None,
    ) -> RocksDBStateBackend:
        """The backend of one operator subtask: under ``state_dir/<operator>/<subtask>``,
        or in a fresh temporary directory when ``state_dir`` is None."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in operator)
        if state_dir is None:
            root = tempfile.mkdtemp(prefix=f"sluice-{safe}-{subtask}-")
            return cls(os.path.join(root, "db"), options=options, remove_root=root)
        return cls(Path(state_dir) / safe / str(subtask), options=options)

    def checkpoint_copy(self, checkpoint_id: int) -> RocksDBStateBackend:
        """A consistent copy of the state now, for an asynchronous snapshot.

        RocksDB writes a checkpoint of hard links to its immutable files (after
        flushing the memtables): cheap, whatever the state size. The copy opens
        as a backend of its own, to be scanned on another thread while this one
        goes on; closing it deletes it.
        """
        import rocksdict

        if self._closed:
            raise SluiceError(f"the rocksdb state at {self.path} is closed")
        target = self.path.parent / f"{self.path.name}.chk-{checkpoint_id}"
        shutil.rmtree(target, ignore_errors=True)
        rocksdict.Checkpoint(self.db).create_checkpoint(str(target))
        small = RocksDBOptions(block_cache_bytes=8 << 20, write_buffer_bytes=1 << 20)
        copy = RocksDBStateBackend(target, options=small, remove_root=target, fresh=False)
        copy.kinds = dict(self.kinds)
        return copy

    def set_current_key(self, key: Hashable) -> None:
        self.kb = encode_key(key)
        self.current_key = key

    def _table(self, kind: bytes, name: str, cls: type[_Table]) -> Any:
        if self._closed:
            raise SluiceError(f"the rocksdb state at {self.path} is closed")
        t = self._tables.get((kind, name))
        if t is None:
            t = self._tables[(kind, name)] = cls(self, kind, name)
        return t

    def value_table(self, name: str) -> ValueTable:
        return self._table(b"v", name, _Values)  # type: ignore[no-any-return]

    def list_table(self, name: str) -> ListTable:
        return self._table(b"l", name, _Lists)  # type: ignore[no-any-return]

    def map_table(self, name: str) -> MapTable:
        return self._table(b"m", name, _Maps)  # type: ignore[no-any-return]

    def timers(self, kind: TimerKind) -> TimerQueue:
        q = self._timers.get(kind)
        if q is None:
            q = self._timers[kind] = _Timers(self, b"E" if kind == "event" else b"P")
        return q

    def memory_usage(self) -> dict[str, int]:
        """Bytes RocksDB holds in memory now (block cache, memtables, readers)."""
        db = self.db
        return {
            "block_cache": int(self._cache.get_usage()),
            "memtables": int(db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0),
            "table_readers": int(db.property_int_value("rocksdb.estimate-table-readers-mem") or 0),
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._tables.clear()
        self._timers.clear()
        self.db.close()
        del self.db
        shutil.rmtree(self._remove, ignore_errors=True)


def _clear_stale(path: Path, opts: Any) -> None:
    """Delete a working copy left by an earlier run (it is never reused: state
    comes back from checkpoints); refuse one that a running job still holds."""
    if not path.exists():
        return
    import rocksdict

    if (path / "CURRENT").exists():
        try:
            rocksdict.Rdict(str(path), opts).close()
        except Exception as e:
            raise ConfigError(
                f"the rocksdb state directory {path} is in use by another job in this "
                f"process or on this machine ({e}); give each job its own state_dir"
            ) from e
    shutil.rmtree(path)


__all__ = ["RocksDBOptions", "RocksDBStateBackend", "StateKeyError", "decode_key", "encode_key"]
