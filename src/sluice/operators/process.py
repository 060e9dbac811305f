"""Keyed process functions: per-record Python with keyed state and timers
(Flink's ``KeyedProcessFunction``). This is the general, slow path."""

from __future__ import annotations

import heapq
import pickle
from collections.abc import Hashable, Iterable
from typing import Any

import polars as pl

from sluice.operators.base import Operator, OperatorContext
from sluice.runtime.messages import MAX_TIME, MIN_TIME, TIME
from sluice.state.keyed import KeyedStateStore, ListState, MapState, ValueState
from sluice.state.snapshot import Snapshot


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

    def value_state(self, name: str, default: Any = None) -> ValueState[Any]:
        return ValueState(self._op.store, name, default)

    def list_state(self, name: str) -> ListState[Any]:
        return ListState(self._op.store, name)

    def map_state(self, name: str) -> MapState[Any, Any]:
        return MapState(self._op.store, name)

    def register_event_time_timer(self, time: int) -> None:
        """Call ``on_timer`` for this key when the watermark reaches ``time``."""
        self._op._register_event_timer(self.key, int(time))

    def delete_event_time_timer(self, time: int) -> None:
        self._op._event_timers.discard((int(time), self.key))

    def register_processing_time_timer(self, time: int) -> None:
        """Call ``on_timer`` for this key when the clock reaches ``time``."""
        self._op._register_processing_timer(self.key, int(time))

    def delete_processing_time_timer(self, time: int) -> None:
        self._op._proc_timers.discard((int(time), self.key))


class KeyedProcessFunction:
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

    def open(self, ctx: ProcessContext) -> None:
        """Called once per subtask before the first element."""

    def process_element(
        self, row: dict[str, Any], ctx: ProcessContext
    ) -> Iterable[dict[str, Any]] | None:
        raise NotImplementedError("override process_element")

    def on_timer(self, timestamp: int, ctx: ProcessContext) -> Iterable[dict[str, Any]] | None:
        """Called when a registered timer fires, with ``ctx.key`` set."""
        return None


class ProcessOperator(Operator):
    def __init__(self, name: str, keys: list[str], fn: KeyedProcessFunction) -> None:
        super().__init__()
        self.name = name
        self.keys = keys
        self.fn = fn
        self.store = KeyedStateStore()
        self.pctx = ProcessContext(self)
        self._event_timers: set[tuple[int, Hashable]] = set()
        self._event_heap: list[tuple[int, int, Hashable]] = []
        self._proc_timers: set[tuple[int, Hashable]] = set()
        self._seq = 0
        self._out_rows: list[dict[str, Any]] = []
        self._out_times: list[int | None] = []

    def open(self, ctx: OperatorContext) -> None:
        super().open(ctx)
        self.fn.open(self.pctx)

    def _set_key(self, key: Hashable) -> None:
        self.pctx.key = key
        self.store.current_key = key

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
        single = len(self.keys) == 1
        k0 = self.keys[0]
        for i, row in enumerate(batch.select(cols).iter_rows(named=True)):
            key = row[k0] if single else tuple(row[k] for k in self.keys)
            self._set_key(key)
            t = times[i] if times is not None else None
            self.pctx.timestamp = t
            self._collect(self.fn.process_element(row, self.pctx), t)
        self._flush()

    # -- timers ------------------------------------------------------------------------
    def _register_event_timer(self, key: Hashable, time: int) -> None:
        if (time, key) in self._event_timers:
            return
        self._event_timers.add((time, key))
        self._seq += 1
        heapq.heappush(self._event_heap, (time, self._seq, key))

    def _register_processing_timer(self, key: Hashable, time: int) -> None:
        if (time, key) in self._proc_timers:
            return
        self._proc_timers.add((time, key))
        assert self.ctx is not None

        def cb(now: int) -> None:
            if (time, key) not in self._proc_timers:
                return
            self._proc_timers.discard((time, key))
            self._set_key(key)
            self.pctx.timestamp = time
            self._collect(self.fn.on_timer(time, self.pctx), None)
            self._flush()

        self.ctx.timers.register(time, cb)

    def on_watermark(self, time: int) -> None:
        heap = self._event_heap
        while heap and heap[0][0] <= time:
            t, _, key = heapq.heappop(heap)
            if (t, key) not in self._event_timers:
                continue  # deleted
            self._event_timers.discard((t, key))
            self._set_key(key)
            self.pctx.timestamp = t
            self._collect(self.fn.on_timer(t, self.pctx), t)
        self._flush()

    def on_end(self) -> None:
        if self.watermark < MAX_TIME:
            self.on_watermark(MAX_TIME)

    # -- checkpoints -------------------------------------------------------------------
    def _key_columns(self, keys: list[Hashable]) -> dict[str, list[Any]]:
        if len(self.keys) == 1:
            return {self.keys[0]: list(keys)}
        return {k: [key[i] for key in keys] for i, k in enumerate(self.keys)}  # type: ignore[index]

    def _keys_of(self, df: pl.DataFrame) -> list[Hashable]:
        if len(self.keys) == 1:
            return df.get_column(self.keys[0]).to_list()
        return [tuple(r) for r in df.select(self.keys).iter_rows()]

    def snapshot_state(self) -> Snapshot:
        snap = Snapshot(keys=self.keys, watermark=self.watermark)
        keys: list[Hashable] = []
        names: list[str] = []
        values: list[bytes] = []
        for name, table in self.store.tables.items():
            for k, v in table.items():
                keys.append(k)
                names.append(name)
                values.append(pickle.dumps(v))
        if keys:
            snap.keyed["values"] = pl.DataFrame(
                {
                    **self._key_columns(keys),
                    "state": names,
                    "value": pl.Series(values, dtype=pl.Binary),
                }
            )
        for label, timers in (
            ("event_timers", self._event_timers),
            ("processing_timers", self._proc_timers),
        ):
            if timers:
                ts = sorted(timers, key=lambda x: x[0])
                snap.keyed[label] = pl.DataFrame(
                    {**self._key_columns([k for _, k in ts]), "time": [t for t, _ in ts]}
                )
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        vals = snapshot.keyed.get("values")
        if vals is not None:
            for k, name, blob in zip(
                self._keys_of(vals), vals["state"].to_list(), vals["value"].to_list(), strict=True
            ):
                self.store.table(name)[k] = pickle.loads(blob)
        ev = snapshot.keyed.get("event_timers")
        if ev is not None:
            for k, t in zip(self._keys_of(ev), ev["time"].to_list(), strict=True):
                self._register_event_timer(k, t)
        pt = snapshot.keyed.get("processing_timers")
        if pt is not None:
            for k, t in zip(self._keys_of(pt), pt["time"].to_list(), strict=True):
                self._register_processing_timer(k, t)


__all__ = ["MIN_TIME", "KeyedProcessFunction", "ProcessContext", "ProcessOperator"]
