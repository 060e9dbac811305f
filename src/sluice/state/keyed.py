"""Keyed state for process functions: value, list and map state per key, with TTL.

State is always accessed for the *current key*, which the operator sets before
each call of the user's function. The cells live in a
:class:`~sluice.state.backends.StateBackend` (memory or RocksDB); this module
adds the user-facing API and the time-to-live rules of
:class:`~sluice.state.ttl.StateTtl`:

- an entry expires ``ttl`` after its last write (or read, with
  ``update_on_read``); an expired entry is **never returned**, even before it
  is cleaned up;
- list state expires per element, map state per entry (as in Flink);
- expired entries are dropped lazily when accessed, and by :meth:`cleanup`
  steps that the operator runs as time advances, so state does not grow
  without bound.

The clock (:class:`StateClock`) gives "now" for each kind of TTL time: the
processing clock, or for event-time TTL the watermark.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from sluice.runtime.messages import MIN_TIME
from sluice.state.backends import Cell, ListTable, MapTable, StateBackend, ValueTable
from sluice.state.ttl import StateTtl, TtlTime

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class StateClock:
    """The clock of state TTL, per kind of time; the operator provides the real one.

    ``now`` judges expiry; ``stamp`` is the time recorded on a write (for event
    time, the event time of the record being processed, never behind the
    watermark). This default is a manual clock, handy in tests.

    >>> c = StateClock(); c.processing = 5; c.now("processing")
    5
    """

    def __init__(self) -> None:
        self.processing = 0
        self.event = MIN_TIME

    def now(self, time: TtlTime) -> int:
        return self.processing if time == "processing" else self.event

    def stamp(self, time: TtlTime) -> int:
        return self.now(time)


class _State(ABC):
    """What the three kinds share: a name, an optional TTL and a clock."""

    kind = "state"

    def __init__(self, name: str, ttl: StateTtl | None, clock: StateClock) -> None:
        self.name = name
        self.ttl = ttl
        self._clock = clock
        # the write time assumed for entries that have none: restored from a
        # checkpoint taken while this state had no TTL (set on first need; a
        # list so that the copies made by ValueState.with_default share it)
        self._unstamped_at: list[int] = []

    def _stamp(self) -> int | None:
        return None if self.ttl is None else self._clock.stamp(self.ttl.time)

    def expired_at(self, now: int) -> Any:
        """A predicate on write times: expired at ``now``? (Only for TTL state.)"""
        ttl = self.ttl
        assert ttl is not None

        def expired(written: int | None) -> bool:
            if written is None:
                written = self._unstamped()
            return ttl.expired(written, now)

        return expired

    def _unstamped(self) -> int:
        if not self._unstamped_at:
            assert self.ttl is not None
            self._unstamped_at.append(self._clock.stamp(self.ttl.time))
        return self._unstamped_at[0]

    def now(self) -> int:
        """The current time of this state's TTL clock."""
        assert self.ttl is not None
        return self._clock.now(self.ttl.time)

    def _live(self, written: int | None) -> bool:
        ttl = self.ttl
        if ttl is None:
            return True
        if written is None:
            written = self._unstamped()
        return not ttl.expired(written, self._clock.now(ttl.time))

    def written_for_snapshot(self, written: int | None) -> int | None:
        """The write time to checkpoint (the assumed one for unstamped entries)."""
        if written is None and self.ttl is not None:
            return self._unstamped()
        return written

    def cleanup(self, budget: int) -> int:
        """Drop expired entries: one bounded step of an incremental pass over all
        keys (a no-op without TTL). Returns the number of entries visited."""
        if self.ttl is None:
            return 0
        return self._table.sweep(budget, self.expired_at(self.now()))

    @property
    @abstractmethod
    def _table(self) -> Any:
        """The backend table holding this state's cells."""

    def describe(self) -> str:
        return f"{self.kind}({'no ttl' if self.ttl is None else self.ttl.describe()})"


class ValueState(_State, Generic[T]):
    """One value per key.

    >>> from sluice.state.backends import MemoryStateBackend
    >>> store = MemoryStateBackend(); store.set_current_key("a")
    >>> s = ValueState(store, "count"); s.update((s.value() or 0) + 1); s.value()
    1

    With a time-to-live, a value is gone ``ttl`` after its last write:

    >>> clock = StateClock()
    >>> s = ValueState(store, "seen", ttl=StateTtl.of("1s"), clock=clock)
    >>> s.update("x"); clock.processing = 999; s.value()
    'x'
    >>> clock.processing = 1000; s.value() is None
    True
    """

    kind = "value_state"

    def __init__(
        self,
        store: StateBackend,
        name: str,
        default: T | None = None,
        *,
        ttl: StateTtl | None = None,
        clock: StateClock | None = None,
    ) -> None:
        super().__init__(name, ttl, clock or StateClock())
        self._t: ValueTable = store.value_table(name)
        self._default = default

    @property
    def _table(self) -> ValueTable:
        return self._t

    @property
    def default(self) -> T | None:
        """What :meth:`value` answers for a key without a value."""
        return self._default

    def with_default(self, default: T | None) -> ValueState[T]:
        """The same state, answering ``default`` when the key has no value."""
        if default is self._default:
            return self
        other: ValueState[T] = object.__new__(ValueState)
        other.__dict__.update(self.__dict__)
        other._default = default
        return other

    def value(self) -> T | None:
        cell = self._t.get()
        if cell is None:
            return self._default
        written, v = cell
        ttl = self.ttl
        if ttl is not None:
            if not self._live(written):
                self._t.delete()
                return self._default
            if ttl.update_on_read:
                self._t.put(self._stamp(), v)
        return v  # type: ignore[no-any-return]

    def update(self, value: T) -> None:
        self._t.put(self._stamp(), value)

    def clear(self) -> None:
        self._t.delete()


class ListState(_State, Generic[T]):
    """A list per key; with a TTL, each element expires on its own.

    >>> from sluice.state.backends import MemoryStateBackend
    >>> store = MemoryStateBackend(); store.set_current_key("a")
    >>> clock = StateClock()
    >>> s = ListState(store, "seen", ttl=StateTtl.of("10s"), clock=clock)
    >>> s.add(1); clock.processing = 5_000; s.add(2); s.get()
    [1, 2]
    >>> clock.processing = 10_000; s.get()
    [2]
    """

    kind = "list_state"

    def __init__(
        self,
        store: StateBackend,
        name: str,
        *,
        ttl: StateTtl | None = None,
        clock: StateClock | None = None,
    ) -> None:
        super().__init__(name, ttl, clock or StateClock())
        self._t: ListTable = store.list_table(name)

    @property
    def _table(self) -> ListTable:
        return self._t

    def get(self) -> list[T]:
        cells = self._t.get()
        ttl = self.ttl
        if ttl is None or not cells:
            return [v for _, v in cells]
        live = [c for c in cells if self._live(c[0])]
        if ttl.update_on_read and live:
            stamp = self._stamp()
            live = [(stamp, v) for _, v in live]
            self._t.put(live)
        elif len(live) != len(cells):
            self._t.put(live)
        return [v for _, v in live]

    def add(self, value: T) -> None:
        self._t.append(self._stamp(), value)

    def add_all(self, values: Iterable[T]) -> None:
        stamp = self._stamp()
        for v in values:
            self._t.append(stamp, v)

    def update(self, values: Iterable[T]) -> None:
        stamp = self._stamp()
        self._t.put([(stamp, v) for v in values])

    def clear(self) -> None:
        self._t.delete()


class MapState(_State, Generic[K, V]):
    """A dict per key; with a TTL, each entry expires on its own.

    >>> from sluice.state.backends import MemoryStateBackend
    >>> store = MemoryStateBackend(); store.set_current_key("a")
    >>> m = MapState(store, "counts"); m.put("x", 1); m.put("y", 2); m.remove("y")
    >>> m.get("x"), m.contains("y"), list(m.items())
    (1, False, [('x', 1)])
    """

    kind = "map_state"

    def __init__(
        self,
        store: StateBackend,
        name: str,
        *,
        ttl: StateTtl | None = None,
        clock: StateClock | None = None,
    ) -> None:
        super().__init__(name, ttl, clock or StateClock())
        self._t: MapTable = store.map_table(name)

    @property
    def _table(self) -> MapTable:
        return self._t

    def _read(self, k: K) -> Cell | None:
        cell = self._t.get(k)
        if cell is None or self.ttl is None:
            return cell
        if not self._live(cell[0]):
            self._t.delete(k)
            return None
        if self.ttl.update_on_read:
            self._t.put(k, self._stamp(), cell[1])
        return cell

    def get(self, k: K, default: V | None = None) -> V | None:
        cell = self._read(k)
        return default if cell is None else cell[1]  # type: ignore[no-any-return]

    def put(self, k: K, v: V) -> None:
        self._t.put(k, self._stamp(), v)

    def put_all(self, entries: dict[K, V]) -> None:
        stamp = self._stamp()
        for k, v in entries.items():
            self._t.put(k, stamp, v)

    def remove(self, k: K) -> None:
        self._t.delete(k)

    def contains(self, k: K) -> bool:
        return self._read(k) is not None

    def _live_entries(self) -> list[tuple[Any, Cell]]:
        entries = self._t.entries()
        ttl = self.ttl
        if ttl is None:
            return entries
        live = []
        stamp = self._stamp() if ttl.update_on_read else None
        for mk, cell in entries:
            if not self._live(cell[0]):
                self._t.delete(mk)
            else:
                if stamp is not None:
                    self._t.put(mk, stamp, cell[1])
                live.append((mk, cell))
        return live

    def items(self) -> Iterator[tuple[K, V]]:
        return iter([(mk, cell[1]) for mk, cell in self._live_entries()])

    def keys(self) -> Iterator[K]:
        return iter([mk for mk, _ in self._live_entries()])

    def values(self) -> Iterator[V]:
        return iter([cell[1] for _, cell in self._live_entries()])

    def is_empty(self) -> bool:
        return not self._live_entries()

    def clear(self) -> None:
        self._t.delete_all()


AnyState = ValueState[Any] | ListState[Any] | MapState[Any, Any]

__all__ = ["AnyState", "ListState", "MapState", "StateClock", "ValueState"]
