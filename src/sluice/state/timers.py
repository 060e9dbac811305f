"""Timer queues: the pending timers of one operator subtask, per kind of time.

A timer is a ``(time, key)`` pair, registered at most once; timers come out in
time order. The memory backend keeps them in a heap, the RocksDB backend in
RocksDB (sorted by time), so that, as in Flink, timers do not hold memory per
key either.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator


class TimerQueue(ABC):
    """Pending timers of one kind (event time or processing time).

    >>> q = HeapTimerQueue(); q.add(20, "a"), q.add(10, "b"), q.add(20, "a")
    (True, True, False)
    >>> q.delete(10, "b"); q.peek_time(), q.pop_due(19), q.pop_due(20), q.pop_due(99)
    (20, None, (20, 'a'), None)
    """

    @abstractmethod
    def add(self, time: int, key: Hashable) -> bool:
        """Register a timer; False if it was registered already."""

    @abstractmethod
    def delete(self, time: int, key: Hashable) -> None: ...

    @abstractmethod
    def peek_time(self) -> int | None:
        """The time of the earliest timer, None when there is none."""

    @abstractmethod
    def pop_due(self, upto: int) -> tuple[int, Hashable] | None:
        """Remove and return the earliest timer if its time is ``<= upto``."""

    @abstractmethod
    def scan(self) -> Iterator[tuple[int, Hashable]]:
        """All pending timers, in time order."""


class HeapTimerQueue(TimerQueue):
    """Timers in a heap, with a set for de-duplication and lazy deletion."""

    def __init__(self) -> None:
        self._live: set[tuple[int, Hashable]] = set()
        self._heap: list[tuple[int, int, Hashable]] = []
        self._seq = 0

    def add(self, time: int, key: Hashable) -> bool:
        if (time, key) in self._live:
            return False
        self._live.add((time, key))
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, key))
        return True

    def delete(self, time: int, key: Hashable) -> None:
        self._live.discard((time, key))

    def _drop_deleted(self) -> None:
        heap = self._heap
        while heap and (heap[0][0], heap[0][2]) not in self._live:
            heapq.heappop(heap)

    def peek_time(self) -> int | None:
        self._drop_deleted()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, upto: int) -> tuple[int, Hashable] | None:
        self._drop_deleted()
        heap = self._heap
        if not heap or heap[0][0] > upto:
            return None
        t, _, key = heapq.heappop(heap)
        self._live.discard((t, key))
        return t, key

    def scan(self) -> Iterator[tuple[int, Hashable]]:
        return iter(sorted(self._live, key=lambda x: x[0]))


__all__ = ["HeapTimerQueue", "TimerQueue"]
