"""State backends: where the keyed state of one operator subtask lives.

A backend holds *tables*, one per declared state name, of three kinds:

- a **value table**: one cell per key;
- a **list table**: a list of cells per key;
- a **map table**: one cell per (key, map key).

Backends also keep the pending timers (:mod:`sluice.state.timers`).

A *cell* is ``(written, value)``: the value and the time of its last write (or
read, for TTL with ``update_on_read``), ``None`` for state without a TTL. Every
access is for the backend's *current key*, which the operator sets before each
call of the user's function. The time-to-live logic lives in
:mod:`sluice.state.keyed`; tables only store cells, scan them for snapshots and
drop expired ones in bounded *sweep* steps.

Two backends, chosen per job (``sl.Flow(state_backend=...)``):

- ``"memory"`` (:class:`MemoryStateBackend`): Python dicts; fastest, bounded by RAM.
- ``"rocksdb"`` (:class:`sluice.state.rocksdb.RocksDBStateBackend`): an embedded
  RocksDB (via ``rocksdict``) on local disk, for state larger than memory.

Scans yield values as pickled bytes, so that snapshots of both backends are the
same Arrow tables and a checkpoint of one restores into the other.
"""

from __future__ import annotations

import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from sluice.errors import ConfigError
from sluice.state.timers import HeapTimerQueue, TimerQueue

if TYPE_CHECKING:
    from sluice.state.rocksdb import RocksDBStateBackend

#: ``(written, value)``: the time of the last write (``None`` without TTL) and the value.
Cell = tuple[int | None, Any]
#: Called with a cell's write time: whether the cell is expired (and may be dropped).
Expired = Callable[[int | None], bool]
StateKind = Literal["value", "list", "map"]
TimerKind = Literal["event", "processing"]
BackendName = Literal["memory", "rocksdb"]

PICKLE_PROTOCOL = 5


class ValueTable(ABC):
    """One value state: a cell per key."""

    @abstractmethod
    def get(self) -> Cell | None: ...

    @abstractmethod
    def put(self, written: int | None, value: Any) -> None: ...

    @abstractmethod
    def delete(self) -> None: ...

    @abstractmethod
    def scan(self) -> Iterator[tuple[Hashable, int | None, bytes]]:
        """All ``(key, written, pickled value)`` of the table."""

    @abstractmethod
    def restore(self, key: Hashable, written: int | None, blob: bytes) -> None: ...

    @abstractmethod
    def sweep(self, budget: int, expired: Expired) -> int:
        """Visit up to ``budget`` cells, continuing where the last call stopped,
        and drop the expired ones; returns the number visited (less than
        ``budget`` when a full pass over the table ended)."""


class ListTable(ABC):
    """One list state: a list of cells per key (TTL applies per element)."""

    @abstractmethod
    def get(self) -> list[Cell]: ...

    @abstractmethod
    def append(self, written: int | None, value: Any) -> None: ...

    @abstractmethod
    def put(self, cells: list[Cell]) -> None:
        """Replace the current key's list (an empty list deletes it)."""

    @abstractmethod
    def delete(self) -> None: ...

    @abstractmethod
    def scan(self) -> Iterator[tuple[Hashable, int, int | None, bytes]]:
        """All ``(key, position, written, pickled element)``, in list order per key."""

    @abstractmethod
    def restore(self, key: Hashable, written: int | None, blob: bytes) -> None:
        """Append one element to ``key``'s list (called in list order)."""

    @abstractmethod
    def sweep(self, budget: int, expired: Expired) -> int: ...


class MapTable(ABC):
    """One map state: a cell per (key, map key) (TTL applies per entry)."""

    @abstractmethod
    def get(self, mk: Any) -> Cell | None: ...

    @abstractmethod
    def put(self, mk: Any, written: int | None, value: Any) -> None: ...

    @abstractmethod
    def delete(self, mk: Any) -> None: ...

    @abstractmethod
    def entries(self) -> list[tuple[Any, Cell]]:
        """The current key's entries (a copy: safe to modify the map meanwhile)."""

    @abstractmethod
    def delete_all(self) -> None: ...

    @abstractmethod
    def scan(self) -> Iterator[tuple[Hashable, Any, int | None, bytes]]:
        """All ``(key, map key, written, pickled value)`` of the table."""

    @abstractmethod
    def restore(self, key: Hashable, mk: Any, written: int | None, blob: bytes) -> None: ...

    @abstractmethod
    def sweep(self, budget: int, expired: Expired) -> int: ...


class StateBackend(ABC):
    """All keyed state of one operator subtask."""

    name: BackendName

    def __init__(self) -> None:
        self.current_key: Hashable = None
        #: The kind of every state name the backend holds (declared or restored).
        self.kinds: dict[str, StateKind] = {}

    def set_current_key(self, key: Hashable) -> None:
        self.current_key = key

    @abstractmethod
    def value_table(self, name: str) -> ValueTable: ...

    @abstractmethod
    def list_table(self, name: str) -> ListTable: ...

    @abstractmethod
    def map_table(self, name: str) -> MapTable: ...

    @abstractmethod
    def timers(self, kind: TimerKind) -> TimerQueue:
        """The pending timers of ``kind`` (event or processing time)."""

    @abstractmethod
    def close(self) -> None:
        """Release files; afterwards only the snapshot scans of the memory backend work."""


# -- memory ----------------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=PICKLE_PROTOCOL)


class _Cursor:
    """Where an incremental sweep over a dict stopped: an iterator over the keys
    the dict had when the pass began (keys deleted since are skipped)."""

    def __init__(self) -> None:
        self._it: Iterator[Hashable] | None = None

    def keys(self, data: dict[Hashable, Any]) -> Iterator[Hashable]:
        if self._it is None:
            self._it = iter(list(data))
        return self._it

    def done(self) -> None:
        self._it = None


class _MemValues(ValueTable):
    def __init__(self, backend: StateBackend) -> None:
        self._b = backend
        self.data: dict[Hashable, Cell] = {}
        self._cursor = _Cursor()

    def get(self) -> Cell | None:
        return self.data.get(self._b.current_key)

    def put(self, written: int | None, value: Any) -> None:
        self.data[self._b.current_key] = (written, value)

    def delete(self) -> None:
        self.data.pop(self._b.current_key, None)

    def scan(self) -> Iterator[tuple[Hashable, int | None, bytes]]:
        for k, (w, v) in self.data.items():
            yield k, w, _dumps(v)

    def restore(self, key: Hashable, written: int | None, blob: bytes) -> None:
        self.data[key] = (written, pickle.loads(blob))

    def sweep(self, budget: int, expired: Expired) -> int:
        data = self.data
        n = 0
        for k in self._cursor.keys(data):
            cell = data.get(k)
            if cell is not None:
                n += 1
                if expired(cell[0]):
                    del data[k]
                if n >= budget:
                    return n
        self._cursor.done()
        return n


class _MemLists(ListTable):
    def __init__(self, backend: StateBackend) -> None:
        self._b = backend
        self.data: dict[Hashable, list[Cell]] = {}
        self._cursor = _Cursor()

    def get(self) -> list[Cell]:
        return self.data.get(self._b.current_key) or []

    def append(self, written: int | None, value: Any) -> None:
        k = self._b.current_key
        cells = self.data.get(k)
        if cells is None:
            self.data[k] = [(written, value)]
        else:
            cells.append((written, value))

    def put(self, cells: list[Cell]) -> None:
        if cells:
            self.data[self._b.current_key] = list(cells)
        else:
            self.delete()

    def delete(self) -> None:
        self.data.pop(self._b.current_key, None)

    def scan(self) -> Iterator[tuple[Hashable, int, int | None, bytes]]:
        for k, cells in self.data.items():
            for i, (w, v) in enumerate(cells):
                yield k, i, w, _dumps(v)

    def restore(self, key: Hashable, written: int | None, blob: bytes) -> None:
        self.data.setdefault(key, []).append((written, pickle.loads(blob)))

    def sweep(self, budget: int, expired: Expired) -> int:
        data = self.data
        n = 0
        for k in self._cursor.keys(data):
            cells = data.get(k)
            if cells is None:
                continue
            n += len(cells)
            live = [c for c in cells if not expired(c[0])]
            if not live:
                del data[k]
            elif len(live) != len(cells):
                data[k] = live
            if n >= budget:
                return n
        self._cursor.done()
        return n


class _MemMaps(MapTable):
    def __init__(self, backend: StateBackend) -> None:
        self._b = backend
        self.data: dict[Hashable, dict[Any, Cell]] = {}
        self._cursor = _Cursor()

    def get(self, mk: Any) -> Cell | None:
        m = self.data.get(self._b.current_key)
        return None if m is None else m.get(mk)

    def put(self, mk: Any, written: int | None, value: Any) -> None:
        k = self._b.current_key
        m = self.data.get(k)
        if m is None:
            self.data[k] = {mk: (written, value)}
        else:
            m[mk] = (written, value)

    def delete(self, mk: Any) -> None:
        k = self._b.current_key
        m = self.data.get(k)
        if m is not None:
            m.pop(mk, None)
            if not m:
                del self.data[k]

    def entries(self) -> list[tuple[Any, Cell]]:
        m = self.data.get(self._b.current_key)
        return list(m.items()) if m else []

    def delete_all(self) -> None:
        self.data.pop(self._b.current_key, None)

    def scan(self) -> Iterator[tuple[Hashable, Any, int | None, bytes]]:
        for k, m in self.data.items():
            for mk, (w, v) in m.items():
                yield k, mk, w, _dumps(v)

    def restore(self, key: Hashable, mk: Any, written: int | None, blob: bytes) -> None:
        self.data.setdefault(key, {})[mk] = (written, pickle.loads(blob))

    def sweep(self, budget: int, expired: Expired) -> int:
        data = self.data
        n = 0
        for k in self._cursor.keys(data):
            m = data.get(k)
            if m is None:
                continue
            n += len(m)
            dead = [mk for mk, (w, _) in m.items() if expired(w)]
            for mk in dead:
                del m[mk]
            if not m:
                del data[k]
            if n >= budget:
                return n
        self._cursor.done()
        return n


class MemoryStateBackend(StateBackend):
    """Keyed state in Python dicts (the default backend).

    Values are stored as the objects themselves: a value changed in place is
    changed in the state too (call ``update`` anyway: on RocksDB it is needed).

    >>> b = MemoryStateBackend(); b.set_current_key("a")
    >>> t = b.value_table("count"); t.put(None, 1); t.get()
    (None, 1)
    """

    name: BackendName = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._values: dict[str, _MemValues] = {}
        self._lists: dict[str, _MemLists] = {}
        self._maps: dict[str, _MemMaps] = {}
        self._timers = {"event": HeapTimerQueue(), "processing": HeapTimerQueue()}

    def value_table(self, name: str) -> ValueTable:
        t = self._values.get(name)
        if t is None:
            t = self._values[name] = _MemValues(self)
        return t

    def list_table(self, name: str) -> ListTable:
        t = self._lists.get(name)
        if t is None:
            t = self._lists[name] = _MemLists(self)
        return t

    def map_table(self, name: str) -> MapTable:
        t = self._maps.get(name)
        if t is None:
            t = self._maps[name] = _MemMaps(self)
        return t

    def timers(self, kind: TimerKind) -> TimerQueue:
        return self._timers[kind]

    def close(self) -> None:
        """Nothing to release: the dicts stay readable for a last snapshot."""


def open_backend(
    name: str,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    operator: str = "operator",
    subtask: int = 0,
    options: Any = None,
) -> StateBackend:
    """Create the backend ``name`` (``"memory"`` or ``"rocksdb"``) for one subtask.

    RocksDB keeps its files under ``state_dir/<operator>/<subtask>`` (a fresh
    temporary directory when ``state_dir`` is None); they are a working copy,
    deleted on close: recovery always restores from checkpoints. ``options``
    is a :class:`~sluice.state.rocksdb.RocksDBOptions` or a dict of its fields.

    >>> open_backend("memory").name
    'memory'
    """
    if name == "memory":
        return MemoryStateBackend()
    if name == "rocksdb":
        from sluice.state.rocksdb import RocksDBOptions, RocksDBStateBackend

        if isinstance(options, dict):
            options = RocksDBOptions(**options)
        return RocksDBStateBackend.for_subtask(state_dir, operator, subtask, options=options)
    raise ConfigError(
        f"operator {operator!r}: unknown state backend {name!r}; use 'memory' or 'rocksdb'"
    )


def rocksdb_for(
    config: dict[str, Any], operator: str, subtask: int, options: Any = None
) -> RocksDBStateBackend | None:
    """The RocksDB backend of one operator subtask when the job's state backend
    (``config["state_backend"]``) is RocksDB, else None (state stays in memory).
    ``options`` (the operator's own) override the job's ``rocksdb_options``."""
    name = config.get("state_backend") or "memory"
    if name == "memory":
        return None
    backend = open_backend(
        name,
        state_dir=config.get("state_dir"),
        operator=operator,
        subtask=subtask,
        options=options or config.get("rocksdb_options"),
    )
    from sluice.state.rocksdb import RocksDBStateBackend

    assert isinstance(backend, RocksDBStateBackend)
    return backend


__all__ = [
    "Cell",
    "ListTable",
    "MapTable",
    "MemoryStateBackend",
    "StateBackend",
    "ValueTable",
    "open_backend",
    "rocksdb_for",
]
