"""The operator protocol every chained operator follows.

An operator instance belongs to one subtask. It receives batches (Polars
DataFrames with the internal ``__time`` column when the stream has event time)
and watermarks, and emits through its :class:`Output`. Watermarks are forwarded
by the base class after the operator has reacted to them, so timers and window
firings always precede the watermark downstream.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from sluice.errors import JobError, SluiceError
from sluice.runtime.messages import MIN_TIME, Barrier
from sluice.state.snapshot import Snapshot


class Target(ABC):
    """Something an output pushes into: a chained operator or an exchange."""

    @abstractmethod
    def push_batch(self, batch: pl.DataFrame) -> None: ...

    @abstractmethod
    def push_watermark(self, time: int) -> None: ...

    @abstractmethod
    def push_idle(self, idle: bool) -> None: ...

    @abstractmethod
    def push_end(self) -> None: ...

    @abstractmethod
    def push_barrier(self, barrier: Barrier) -> None: ...


class Output:
    """Fan-out of an operator's main output and its tagged side outputs."""

    __slots__ = ("main", "side")

    def __init__(self) -> None:
        self.main: list[Target] = []
        self.side: dict[str, list[Target]] = {}

    def emit(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        for t in self.main:
            t.push_batch(batch)

    def emit_side(self, tag: str, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        for t in self.side.get(tag, ()):
            t.push_batch(batch)

    def has_side(self, tag: str) -> bool:
        return bool(self.side.get(tag))

    def _all(self) -> list[Target]:
        out = list(self.main)
        for ts in self.side.values():
            out.extend(ts)
        return out

    def watermark(self, time: int) -> None:
        for t in self._all():
            t.push_watermark(time)

    def idle(self, idle: bool) -> None:
        for t in self._all():
            t.push_idle(idle)

    def end(self) -> None:
        for t in self._all():
            t.push_end()

    def barrier(self, barrier: Barrier) -> None:
        for t in self._all():
            t.push_barrier(barrier)


@dataclass
class Metrics:
    """Counters of one operator subtask."""

    records_in: int = 0
    records_out: int = 0
    batches_in: int = 0
    late_dropped: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int) -> None:
        self.extra[name] = self.extra.get(name, 0) + n


class Clock:
    """Processing-time clock (milliseconds). Tests may replace it."""

    def now(self) -> int:
        import time

        return time.time_ns() // 1_000_000


class TimerService:
    """Processing-time callbacks for all operators of one runtime."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[tuple[int, int, Callable[[int], None]]] = []
        self._seq = 0

    def register(self, at: int, callback: Callable[[int], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, callback))

    def next_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def fire_due(self) -> bool:
        if not self._heap:
            return False
        now = self.clock.now()
        fired = False
        while self._heap and self._heap[0][0] <= now:
            _at, _, cb = heapq.heappop(self._heap)
            cb(now)
            fired = True
        return fired


class SnapshotSink(ABC):
    """Receives the state of each operator subtask at a checkpoint barrier."""

    @abstractmethod
    def ack(self, checkpoint_id: int, op: Operator, snapshot: Snapshot) -> None: ...


@dataclass
class OperatorContext:
    """What the runtime gives an operator instance when it opens."""

    name: str
    subtask: int
    parallelism: int
    timers: TimerService
    metrics: Metrics
    config: dict[str, Any] = field(default_factory=dict)
    checkpoints: SnapshotSink | None = None

    def now(self) -> int:
        return self.timers.clock.now()


class Operator(Target):
    """Base class of chained operators.

    Subclasses override :meth:`process_batch` and, when they hold state or
    timers, :meth:`on_watermark` (called before the watermark is forwarded),
    :meth:`on_end` (called at end of input, after the final watermark).
    """

    name = "operator"

    def __init__(self) -> None:
        self.output = Output()
        self.watermark = MIN_TIME
        self.ctx: OperatorContext | None = None
        self.finished = False

    # -- lifecycle -------------------------------------------------------------
    def open(self, ctx: OperatorContext) -> None:
        self.ctx = ctx

    @property
    def metrics(self) -> Metrics:
        assert self.ctx is not None
        return self.ctx.metrics

    def close(self) -> None:
        """Release resources (called on normal end and on stop)."""

    # -- data path -------------------------------------------------------------
    @abstractmethod
    def process_batch(self, batch: pl.DataFrame) -> None:
        """React to one batch of rows (emit results with :meth:`emit`)."""

    def on_watermark(self, time: int) -> None:
        """React to a new watermark (fire windows, timers) before it is forwarded."""

    def on_end(self) -> None:
        """End of input: flush anything pending (the final watermark came already)."""

    # -- checkpoints --------------------------------------------------------------------
    def snapshot_state(self) -> Snapshot:
        """This subtask's state at a barrier. Stateless operators keep the default."""
        return Snapshot(watermark=self.watermark)

    def checkpoint_snapshot(self, checkpoint_id: int) -> Snapshot:
        """The snapshot taken for checkpoint ``checkpoint_id`` (sinks pre-commit here)."""
        return self.snapshot_state()

    def restore_state(self, snapshot: Snapshot) -> None:
        """Load state from a checkpoint: ``snapshot`` merges the snapshots of the
        old subtasks, keyed tables already cut to this subtask's key groups.

        Watermarks are not restored here: the sources re-emit theirs before any
        data, so every channel and operator downstream gets it back in order.
        """

    # -- Target protocol (called by the upstream) -------------------------------
    def push_batch(self, batch: pl.DataFrame) -> None:
        m = self.metrics
        m.records_in += batch.height
        m.batches_in += 1
        try:
            self.process_batch(batch)
        except SluiceError:
            raise
        except Exception as e:
            raise self._failure(e, f"a batch of {batch.height} rows") from e

    def _failure(self, e: Exception, what: str) -> JobError:
        where = f"operator {self.name!r}"
        if self.ctx is not None and self.ctx.parallelism > 1:
            where += f" (subtask {self.ctx.subtask} of {self.ctx.parallelism})"
        return JobError(f"{where} failed on {what}: {type(e).__name__}: {e}")

    def push_watermark(self, time: int) -> None:
        if time <= self.watermark:
            return
        self.watermark = time
        try:
            self.on_watermark(time)
        except SluiceError:
            raise
        except Exception as e:
            raise self._failure(e, f"watermark {time}") from e
        self.output.watermark(time)

    def push_idle(self, idle: bool) -> None:
        self.output.idle(idle)

    def push_end(self) -> None:
        self.on_end()
        self.finished = True
        self.close()
        self.output.end()

    def push_barrier(self, barrier: Barrier) -> None:
        if self.ctx is not None and self.ctx.checkpoints is not None:
            cid = barrier.checkpoint_id
            self.ctx.checkpoints.ack(cid, self, self.checkpoint_snapshot(cid))
        self.output.barrier(barrier)

    def emit(self, batch: pl.DataFrame) -> None:
        if batch.height:
            self.metrics.records_out += batch.height
            self.output.emit(batch)


class TwoInputOperator(Operator):
    """Base class of operators with two inputs (joins): ``side`` 0 is the
    first input of the node, 1 the second. Watermarks are already combined
    (the minimum of both inputs) by the input gate, as in Flink.
    """

    def process_batch(self, batch: pl.DataFrame) -> None:  # pragma: no cover - wiring bug
        raise JobError(f"operator {self.name!r} has two inputs: batches must come with a side")

    @abstractmethod
    def process_side(self, side: int, batch: pl.DataFrame) -> None:
        """React to one batch of rows from input ``side`` (0 or 1)."""

    def push_side(self, side: int, batch: pl.DataFrame) -> None:
        m = self.metrics
        m.records_in += batch.height
        m.batches_in += 1
        try:
            self.process_side(side, batch)
        except SluiceError:
            raise
        except Exception as e:
            raise self._failure(e, f"a batch of {batch.height} rows from input {side}") from e
