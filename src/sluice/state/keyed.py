"""Keyed state for process functions: value, list and map state per key.

The memory backend keeps, per state name, a dict from key to value. State is
always accessed for the *current key* set by the operator before each call.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class KeyedStateStore:
    """All keyed state of one operator subtask (memory backend)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[Hashable, Any]] = {}
        self.current_key: Hashable = None

    def table(self, name: str) -> dict[Hashable, Any]:
        return self.tables.setdefault(name, {})

    def keys(self) -> set[Hashable]:
        out: set[Hashable] = set()
        for t in self.tables.values():
            out.update(t)
        return out


class ValueState(Generic[T]):
    """One value per key.

    >>> store = KeyedStateStore(); store.current_key = "a"
    >>> s = ValueState(store, "count"); s.update((s.value() or 0) + 1); s.value()
    1
    """

    def __init__(self, store: KeyedStateStore, name: str, default: T | None = None) -> None:
        self._store = store
        self._t = store.table(name)
        self._default = default

    def value(self) -> T | None:
        return self._t.get(self._store.current_key, self._default)

    def update(self, value: T) -> None:
        self._t[self._store.current_key] = value

    def clear(self) -> None:
        self._t.pop(self._store.current_key, None)


class ListState(Generic[T]):
    """A list per key."""

    def __init__(self, store: KeyedStateStore, name: str) -> None:
        self._store = store
        self._t = store.table(name)

    def get(self) -> list[T]:
        return list(self._t.get(self._store.current_key, ()))

    def add(self, value: T) -> None:
        self._t.setdefault(self._store.current_key, []).append(value)

    def update(self, values: list[T]) -> None:
        self._t[self._store.current_key] = list(values)

    def clear(self) -> None:
        self._t.pop(self._store.current_key, None)


class MapState(Generic[K, V]):
    """A dict per key."""

    def __init__(self, store: KeyedStateStore, name: str) -> None:
        self._store = store
        self._t = store.table(name)

    def _m(self) -> dict[K, V]:
        return self._t.setdefault(self._store.current_key, {})

    def get(self, k: K, default: V | None = None) -> V | None:
        return self._t.get(self._store.current_key, {}).get(k, default)

    def put(self, k: K, v: V) -> None:
        self._m()[k] = v

    def remove(self, k: K) -> None:
        self._m().pop(k, None)

    def contains(self, k: K) -> bool:
        return k in self._t.get(self._store.current_key, {})

    def items(self) -> Iterator[tuple[K, V]]:
        return iter(list(self._t.get(self._store.current_key, {}).items()))

    def clear(self) -> None:
        self._t.pop(self._store.current_key, None)
