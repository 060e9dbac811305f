"""Keyed process functions: per-record Python with keyed state and timers
(Flink's ``KeyedProcessFunction``). This is the general, slow path."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable
from typing import Any

import polars as pl

from sluice.errors import ConfigError
from sluice.operators.base import Operator, OperatorContext
from sluice.runtime.messages import MAX_TIME, MIN_TIME, TIME
from sluice.state.backends import (
    MemoryStateBackend,
    StateBackend,
    StateKind,
    open_backend,
)
from sluice.state.keyed import AnyState, ListState, MapState, StateClock, ValueState
from sluice.state.rocksdb import RocksDBStateBackend
from sluice.state.snapshot import Deferred, Snapshot
from sluice.state.tables import LABELS, StateTables
from sluice.state.ttl import StateTtl, TtlTime
from sluice.time.durations import Duration


class ProcessContext:
    """What a process function sees: the current key, time, state and timers."""

    def __init__(self, op: ProcessOperator) -> None:
        self._op = op
        self.key: Any = None
        self.timestamp: int | None = None

    @property
    def watermark(self) -> int:
        """The operator's current event-time watermark (ms)."""
        return self._op.watermark

    def processing_time(self) -> int:
        """The machine clock (ms)."""
        assert self._op.ctx is not None
        return self._op.ctx.now()

    def value_state(
        self,
        name: str,
        default: Any = None,
        *,
        ttl: Duration | None = None,
        ttl_time: str = "processing",
        update_on_read: bool = False,
    ) -> ValueState[Any]:
        """One value per key: ``.value()``, ``.update(v)``, ``.clear()``.

        With ``ttl`` (``"10m"``, a timedelta or ms) a value expires that long
        after its last write, or its last read too with ``update_on_read=True``,
        and is never returned once expired. ``ttl_time="processing"`` counts on
        the machine clock (Flink's state TTL); ``ttl_time="event"`` is a Sluice
        addition whose clock is the watermark: a value written by a record of
        event time ``t`` expires when the watermark reaches ``t + ttl`` (inside
        an event-time timer, the clock is the timer's time).

        A state name has one kind and one TTL per operator: declaring it again
        with other settings raises :class:`~sluice.errors.ConfigError`.

        >>> import sluice as sl
        >>> class FirstSeen(sl.KeyedProcessFunction):
        ...     def process_element(self, row, ctx):
        ...         seen = ctx.value_state("seen", False, ttl="1s", ttl_time="event")
        ...         if not seen.value():
        ...             seen.update(True)
        ...             yield {"user": ctx.key, "ts": ctx.timestamp}
        >>> rows = [{"user": "a", "ts": t} for t in (0, 500, 1200, 3000, 3100)]
        >>> f = sl.Flow("seen"); out = sl.sinks.collect()
        >>> src = sl.sources.memory(rows, batch_size=1)
        >>> f.source(src, time="ts").key_by("user").process(FirstSeen()).sink(out)
        >>> _ = f.run(); out.to_polars()["ts"].to_list()
        [0, 3000]
        """
        op = self._op
        st: ValueState[Any] = op.declare_state("value", name, ttl, ttl_time, update_on_read)  # type: ignore[assignment]
        if default is st.default:
            return st
        view = op._views.get(name)
        if view is None or view.default is not default:
            view = op._views[name] = st.with_default(default)
        return view

    def list_state(
        self,
        name: str,
        *,
        ttl: Duration | None = None,
        ttl_time: str = "processing",
        update_on_read: bool = False,
    ) -> ListState[Any]:
        """A list per key: ``.get()``, ``.add(v)``, ``.add_all(vs)``, ``.update(vs)``,
        ``.clear()``. With ``ttl``, each element expires on its own (see
        :meth:`value_state`)."""
        return self._op.declare_state("list", name, ttl, ttl_time, update_on_read)  # type: ignore[return-value]

    def map_state(
        self,
        name: str,
        *,
        ttl: Duration | None = None,
        ttl_time: str = "processing",
        update_on_read: bool = False,
    ) -> MapState[Any, Any]:
        """A dict per key: ``.get(k)``, ``.put(k, v)``, ``.contains(k)``, ``.items()``,
        ``.remove(k)``, ``.clear()``... With ``ttl``, each entry expires on its own
        (see :meth:`value_state`)."""
        return self._op.declare_state("map", name, ttl, ttl_time, update_on_read)  # type: ignore[return-value]

    def register_event_time_timer(self, time: int) -> None:
        """Call ``on_timer`` for this key when the watermark reaches ``time``."""
        self._op._register_event_timer(self.key, int(time))

    def delete_event_time_timer(self, time: int) -> None:
        self._op.backend.timers("event").delete(int(time), self.key)

    def register_processing_time_timer(self, time: int) -> None:
        """Call ``on_timer`` for this key when the clock reaches ``time``."""
        self._op._register_processing_timer(self.key, int(time))

    def delete_processing_time_timer(self, time: int) -> None:
        self._op.backend.timers("processing").delete(int(time), self.key)


class KeyedProcessFunction(ABC):
    """Subclass and override :meth:`process_element` (and :meth:`on_timer`).

    Both return (or yield) output rows as dicts; outputs carry the event time of
    the element, or the timer's time.

    >>> import sluice as sl
    >>> class Running(sl.KeyedProcessFunction):
    ...     def process_element(self, row, ctx):
    ...         total = ctx.value_state("total", 0)
    ...         total.update(total.value() + row["n"])
    ...         yield {"user": row["user"], "total": total.value()}
    >>> f = sl.Flow("p"); out = sl.sinks.collect()
    >>> f.source([{"user": "a", "n": 1}, {"user": "a", "n": 2}]).key_by("user").process(Running()).sink(out)
    >>> _ = f.run(); out.to_polars()["total"].to_list()
    [1, 3]
    """

    def open(self, ctx: ProcessContext) -> None:  # noqa: B027 - optional hook
        """Called once per subtask before the first element."""

    @abstractmethod
    def process_element(
        self, row: dict[str, Any], ctx: ProcessContext
    ) -> Iterable[dict[str, Any]] | None:
        """Handle one row of the current key; return or yield output rows."""

    def on_timer(self, timestamp: int, ctx: ProcessContext) -> Iterable[dict[str, Any]] | None:
        """Called when a registered timer fires, with ``ctx.key`` set."""
        return None


class _OperatorClock(StateClock):
    """State TTL time as the operator sees it.

    Processing time is the runtime clock. Event time is the watermark, or the
    firing timer's time inside an event-time timer (timers fire in time order as
    the watermark passes them); a write is stamped with the event time of the
    record (or timer) being processed, never behind the watermark.
    """

    def __init__(self, op: ProcessOperator) -> None:
        super().__init__()
        self._op = op

    def now(self, time: TtlTime) -> int:
        op = self._op
        if time == "processing":
            assert op.ctx is not None
            return op.ctx.now()
        return op.watermark if op._timer_time is None else op._timer_time

    def stamp(self, time: TtlTime) -> int:
        op = self._op
        if time == "processing":
            assert op.ctx is not None
            return op.ctx.now()
        if op._no_event_time:
            raise ConfigError(
                f"operator {op.name!r}: a state with ttl_time='event' needs a stream with "
                "event time (a source with time=...); use ttl_time='processing'"
            )
        now = self.now(time)
        t = op._event_time
        return now if t is None or t < now else t


class _FrozenTtl:
    """What :meth:`StateTables.write` asks of a state (its TTL, which entries are
    expired, the write time of unstamped entries), fixed at the barrier so that
    a snapshot built later on another thread sees the state as of the barrier."""

    def __init__(self, st: AnyState) -> None:
        self.ttl = st.ttl
        self._st = st
        self._now = st.now() if st.ttl is not None else 0
        self._unstamped = st.written_for_snapshot(None)

    def now(self) -> int:
        return self._now

    def expired_at(self, now: int) -> Any:
        return self._st.expired_at(now)

    def written_for_snapshot(self, written: int | None) -> int | None:
        return self._unstamped if written is None else written


#: Entries each TTL state checks for expiry per batch: a base plus a few per row,
#: so that cleanup keeps pace with the rate at which entries are written.
CLEANUP_BASE = 64
CLEANUP_PER_ROW = 2
#: Without input, processing-time TTL state is still cleaned up every second.
CLEANUP_INTERVAL_MS = 1_000
CLEANUP_IDLE_BUDGET = 10_000
_CLASSES: dict[StateKind, type] = {"value": ValueState, "list": ListState, "map": MapState}


class ProcessOperator(Operator):
    """Runs a :class:`KeyedProcessFunction` on one subtask, with its keyed state
    (in the job's state backend) and timers.

    The backend is ``state_backend`` (``"memory"`` or ``"rocksdb"``) or, when
    None, the job's setting ``ctx.config["state_backend"]`` (``sl.Flow(...,
    state_backend=...)``); likewise ``state_dir`` and ``rocksdb_options``
    (:class:`sluice.state.rocksdb.RocksDBOptions`).

    Checkpoints carry the state and timers as keyed Arrow tables, the same for
    every backend (:mod:`sluice.state.tables`): a checkpoint of one restores
    into the other, TTL write times included. Timers live in the backend too:
    on RocksDB, memory does not grow with the number of keys.
    """

    def __init__(
        self,
        name: str,
        keys: list[str],
        fn: KeyedProcessFunction,
        *,
        state_backend: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        rocksdb_options: Any = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.keys = keys
        self.fn = fn
        self._backend_name = state_backend
        self._state_dir = state_dir
        self._rocksdb_options = rocksdb_options
        self.backend: StateBackend = MemoryStateBackend()
        self._states: dict[str, AnyState] = {}
        self._declared: dict[str, tuple[Any, ...]] = {}
        self._views: dict[str, ValueState[Any]] = {}
        self._tables = StateTables(keys, name)
        self._clock = _OperatorClock(self)
        self._event_time: int | None = None
        self._timer_time: int | None = None
        self._no_event_time = False
        self._cleanup_scheduled = False
        self._closed = False
        self._final: Snapshot | None = None
        self.pctx = ProcessContext(self)
        self._wakeup: int | None = None  # when the runtime calls us for processing timers
        self._out_rows: list[dict[str, Any]] = []
        self._out_times: list[int | None] = []

    def open(self, ctx: OperatorContext) -> None:
        super().open(ctx)
        conf = ctx.config
        backend = self._backend_name or conf.get("state_backend") or "memory"
        state_dir = self._state_dir if self._state_dir is not None else conf.get("state_dir")
        options = self._rocksdb_options or conf.get("rocksdb_options")
        self.backend = open_backend(
            backend, state_dir=state_dir, operator=ctx.name, subtask=ctx.subtask, options=options
        )
        self.fn.open(self.pctx)

    def close(self) -> None:
        if self._closed:
            return
        if (
            self.finished
            and self.ctx is not None
            and self.ctx.checkpoints is not None
            and not isinstance(self.backend, MemoryStateBackend)
        ):
            # a finished subtask is still part of later checkpoints
            self._final = self.snapshot_state()
        self._closed = True
        self.backend.close()

    # -- state -------------------------------------------------------------------------
    def declare_state(
        self,
        kind: StateKind,
        name: str,
        ttl: Duration | None,
        ttl_time: str,
        update_on_read: bool,
    ) -> AnyState:
        """The state ``name`` of ``kind``, created on first use (one object per name)."""
        args = (kind, ttl, ttl_time, update_on_read)
        st = self._states.get(name)
        if st is not None and self._declared.get(name) == args:
            return st  # the common case: declared again, as before, for each row
        config = StateTtl.of(ttl, ttl_time, update_on_read, state=f"state {name!r}")
        if st is not None:
            if st.kind == _CLASSES[kind].kind and st.ttl == config:  # type: ignore[attr-defined]
                self._declared[name] = args
                return st
            asked = f"{_CLASSES[kind].kind}({'no ttl' if config is None else config.describe()})"  # type: ignore[attr-defined]
            raise ConfigError(
                f"operator {self.name!r}: state {name!r} is declared as {st.describe()} and "
                f"again as {asked}; a state name has one kind and one TTL per operator "
                "(use another name for another configuration)"
            )
        known = self.backend.kinds.get(name)
        if known is not None and known != kind:
            raise ConfigError(
                f"operator {self.name!r}: state {name!r} is a {LABELS[known]} in the "
                f"checkpoint being restored, but is now used as a {LABELS[kind]}; "
                "rename the state, or start without the checkpoint"
            )
        self.backend.kinds[name] = kind
        if kind == "value":
            st = ValueState(self.backend, name, ttl=config, clock=self._clock)
        elif kind == "list":
            st = ListState(self.backend, name, ttl=config, clock=self._clock)
        else:
            st = MapState(self.backend, name, ttl=config, clock=self._clock)
        self._states[name] = st
        self._declared[name] = args
        self._tables.adopt_legacy(self.backend, name)
        if config is not None and config.time == "processing":
            self._schedule_cleanup()
        return st

    def _cleanup(self, budget: int, *, time: TtlTime | None = None) -> None:
        for st in self._states.values():
            if st.ttl is not None and (time is None or st.ttl.time == time):
                st.cleanup(budget)

    def _schedule_cleanup(self) -> None:
        if self._cleanup_scheduled or self.ctx is None:
            return
        self._cleanup_scheduled = True
        timers = self.ctx.timers

        def tick(now: int) -> None:
            if self._closed:
                return
            self._cleanup(CLEANUP_IDLE_BUDGET, time="processing")
            timers.register(now + CLEANUP_INTERVAL_MS, tick)

        timers.register(self.ctx.now() + CLEANUP_INTERVAL_MS, tick)

    def _set_key(self, key: Hashable) -> None:
        self.pctx.key = key
        self.backend.set_current_key(key)

    def _collect(self, produced: Iterable[dict[str, Any]] | None, time: int | None) -> None:
        if produced is None:
            return
        if isinstance(produced, dict):
            produced = [produced]
        for r in produced:
            self._out_rows.append(r)
            self._out_times.append(time)

    def _flush(self) -> None:
        if not self._out_rows:
            return
        df = pl.DataFrame(self._out_rows, infer_schema_length=None)
        if any(t is not None for t in self._out_times):
            df = df.with_columns(pl.Series(TIME, self._out_times, dtype=pl.Int64))
        self._out_rows = []
        self._out_times = []
        self.emit(df)

    def process_batch(self, batch: pl.DataFrame) -> None:
        cols = [c for c in batch.columns if not c.startswith("__")]
        times = batch.get_column(TIME).to_list() if TIME in batch.columns else None
        self._tables.remember_key_dtypes(batch.schema)
        single = len(self.keys) == 1
        k0 = self.keys[0]
        self._no_event_time = times is None
        try:
            for i, row in enumerate(batch.select(cols).iter_rows(named=True)):
                key = row[k0] if single else tuple(row[k] for k in self.keys)
                self._set_key(key)
                t = times[i] if times is not None else None
                self.pctx.timestamp = t
                self._event_time = t
                self._collect(self.fn.process_element(row, self.pctx), t)
        finally:
            self._event_time = None
            self._no_event_time = False
        self._flush()
        self._cleanup(CLEANUP_BASE + CLEANUP_PER_ROW * batch.height)

    # -- timers ------------------------------------------------------------------------
    def _register_event_timer(self, key: Hashable, time: int) -> None:
        self.backend.timers("event").add(time, key)

    def _register_processing_timer(self, key: Hashable, time: int) -> None:
        if self.backend.timers("processing").add(time, key):
            self._wake_at(time)

    def _wake_at(self, time: int) -> None:
        """Have the runtime call us at ``time`` (one callback for all our timers)."""
        if self._wakeup is not None and self._wakeup <= time:
            return
        assert self.ctx is not None
        self._wakeup = time
        self.ctx.timers.register(time, self._on_processing_time)

    def _on_processing_time(self, now: int) -> None:
        if self._closed or self._wakeup is None or self._wakeup > now:
            return  # superseded by an earlier wake-up, which did the work
        self._wakeup = None
        timers = self.backend.timers("processing")
        while (due := timers.pop_due(now)) is not None:
            t, key = due
            self._set_key(key)
            self.pctx.timestamp = t
            self._collect(self.fn.on_timer(t, self.pctx), None)
        self._flush()
        nxt = timers.peek_time()
        if nxt is not None:
            self._wake_at(nxt)

    def on_watermark(self, time: int) -> None:
        timers = self.backend.timers("event")
        try:
            while (due := timers.pop_due(time)) is not None:
                t, key = due
                self._set_key(key)
                self.pctx.timestamp = t
                self._event_time = self._timer_time = t
                self._collect(self.fn.on_timer(t, self.pctx), t)
        finally:
            self._event_time = self._timer_time = None
        self._flush()
        self._cleanup(CLEANUP_BASE, time="event")

    def on_end(self) -> None:
        if self.watermark < MAX_TIME:
            self.on_watermark(MAX_TIME)

    # -- checkpoints -------------------------------------------------------------------
    def snapshot_state(self) -> Snapshot:
        """The state and timers as keyed tables (see :mod:`sluice.state.tables`)."""
        if self._final is not None:
            return self._final
        snap = Snapshot(keys=self.keys, watermark=self.watermark)
        snap.keyed.update(self._tables.write(self.backend, self._states))
        return snap

    def checkpoint_snapshot(self, checkpoint_id: int) -> Snapshot:
        """On RocksDB, an asynchronous snapshot: at the barrier only a RocksDB
        checkpoint (hard links) is taken; the checkpoint's writer thread scans
        it into the same tables as :meth:`snapshot_state`, so the job is not
        blocked for a time that grows with the state."""
        backend = self.backend
        if self._final is not None or not isinstance(backend, RocksDBStateBackend):
            return self.snapshot_state()
        copy = backend.checkpoint_copy(checkpoint_id)
        tables = self._tables.detached()
        # TTL expiry as of the barrier, not of the moment the writer gets to it
        states = {n: _FrozenTtl(st) for n, st in self._states.items()}
        snap = Snapshot(keys=self.keys, watermark=self.watermark)
        snap.deferred.append(Deferred(lambda: tables.write(copy, states), copy.close))
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        self._tables.read(snapshot.keyed, self.backend, self._states)
        # event timers fire with the watermarks the sources re-emit; processing
        # timers need a wake-up
        nxt = self.backend.timers("processing").peek_time()
        if nxt is not None:
            self._wake_at(nxt)


__all__ = ["MIN_TIME", "KeyedProcessFunction", "ProcessContext", "ProcessOperator"]
