"""``KeyedStream``: the verbs of a stream partitioned by key (per-key windows,
process functions, dedup, ``top_n`` and running aggregates).

Every verb hash-partitions the stream by the key columns so that all rows of
a key meet in one subtask, where their state lives.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from sluice.api.stream import _kept_upsert_key
from sluice.api.windowed import WindowedStream
from sluice.connectors.base import Sink
from sluice.errors import ConfigError
from sluice.operators import aggregations as _agg
from sluice.operators.base import Operator
from sluice.operators.stateless import FilterOp, MapOp, Passthrough, SelectOp
from sluice.time.durations import Duration, parse_duration
from sluice.time.windows import Trigger, WindowSpec

if TYPE_CHECKING:
    from sluice.api.stream import Stream


class KeyedStream:
    """A stream partitioned by key; windows, state and dedup are per key."""

    def __init__(self, stream: Stream, keys: list[str]) -> None:
        self.stream = stream
        self.keys = keys

    def window(
        self,
        spec: WindowSpec,
        *,
        allowed_lateness: Duration = 0,
        trigger: Trigger | None = None,
    ) -> WindowedStream:
        """Per-key windows (``sl.windows.tumbling("1m")`` etc.).

        ``allowed_lateness`` keeps window state that long after the window
        closed: late rows update it and the window fires again. ``trigger``
        asks for early firings (``sl.triggers.every("1s")``, ``on_update()``).
        """
        return WindowedStream(self.stream, self.keys, spec, allowed_lateness, trigger)

    def process(self, fn: Any, *, name: str = "process") -> Stream:
        """Run a :class:`sluice.KeyedProcessFunction` with per-key state and timers."""
        from sluice.operators.process import ProcessOperator

        keys = list(self.keys)
        nm = name
        node = self.stream._then(
            nm,
            # each subtask gets its own copy: functions may keep handles on self
            lambda i, n: ProcessOperator(nm, keys, copy.deepcopy(fn)),
            exchange="hash",
            keys=keys,
        )
        return self.stream._derive(node)

    def dedup(self, within: Duration) -> Stream:
        """Drop rows whose key was already seen less than ``within`` earlier
        (event time, or processing time if the stream has none); the first
        occurrence is kept."""
        from sluice.operators.dedup import DedupOperator

        w = parse_duration(within, what="dedup bound", allow_zero=False)
        keys = list(self.keys)
        et = self.stream.event_time
        node = self.stream._then(
            "dedup", lambda i, n: DedupOperator("dedup", keys, w, et), exchange="hash", keys=keys
        )
        return self.stream._derive(node)

    def top_n(
        self,
        n: int,
        by: str | Sequence[str],
        *,
        descending: bool | Sequence[bool] = False,
        nulls_last: bool | Sequence[bool] | None = None,
        rank: str | None = "rank_number",
        ttl: Duration | None = None,
    ) -> Stream:
        """The ``n`` first rows of every key in the order of ``by`` (Flink SQL's
        ``ROW_NUMBER() OVER (PARTITION BY keys ORDER BY by) AS rank_number ...
        WHERE rank_number <= n``), kept up to date as rows arrive.

        The result is an **upsert stream**: each batch emits one row per slot
        ``(key, rank)`` whose row changed, carrying the input columns and the
        ``rank`` column (Int64, 1..n); its upsert key is ``(keys..., rank)``.
        With ``rank=None`` (only for ``n=1``) no rank column is added and the
        upsert key is the key columns. Rows with equal sort values rank in
        arrival order, earlier first; nulls sort as the smallest value (first
        when ascending, last when descending, as in Flink) unless
        ``nulls_last`` is given. Each output row keeps the event time of the
        input row in its slot. Needs an append-only input; a slot, once
        filled, is never emptied, so no deletions are needed.

        State is kept forever unless ``ttl`` is given: a key's top-N is then
        forgotten ``ttl`` after the latest event time of a row that entered it
        (by the watermark; on the processing-time clock when the stream has no
        event time), as Flink's state TTL. The key's next rows fill its slots
        again from rank 1; slots not filled again keep their old rows downstream.

        >>> import sluice as sl
        >>> f = sl.Flow("top"); out = sl.sinks.collect()
        >>> bids = f.source([{"auction": 1, "price": 5}, {"auction": 1, "price": 9},
        ...                  {"auction": 1, "price": 7}])
        >>> bids.key_by("auction").top_n(2, "price", descending=True).sink(out)
        >>> _ = f.run()
        >>> sl.materialize(out.to_polars(), ["auction", "rank_number"]).rows()
        [(1, 9, 1), (1, 7, 2)]
        """
        from sluice.operators.topn import TopNOperator

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"top_n: n must be an integer >= 1, got {n!r}")
        cols = [by] if isinstance(by, str) else list(by) if isinstance(by, Sequence) else None
        if not cols or not all(isinstance(c, str) and c for c in cols):
            raise ConfigError(
                f"top_n: by must be a column name or a non-empty list of names, got {by!r}"
            )
        desc = _per_column("descending", descending, cols)
        nl = desc if nulls_last is None else _per_column("nulls_last", nulls_last, cols)
        if rank is not None and (not isinstance(rank, str) or not rank):
            raise ConfigError(f"top_n: rank must be a column name or None, got {rank!r}")
        if rank is not None and rank in (*self.keys, *cols):
            raise ConfigError(f"top_n: rank column {rank!r} is also a key or sort column")
        if rank is None and n > 1:
            raise ConfigError(
                f"top_n: rank=None needs n=1 (got n={n}): without the rank column the "
                f"{n} rows of a key cannot be told apart, so a later row could not say "
                "which one it replaces. Keep the rank column (drop it after "
                "sl.materialize if you do not need it)"
            )
        if self.stream.upsert_key is not None:
            raise ConfigError(
                f"top_n: the input is an upsert stream (upsert key "
                f"{list(self.stream.upsert_key)}); top_n needs an append-only input"
            )
        ttl_ms = None if ttl is None else parse_duration(ttl, what="top_n ttl", allow_zero=False)
        et = self.stream.event_time
        keys = list(self.keys)
        node = self.stream._then(
            "top_n",
            lambda i, p: TopNOperator("top_n", keys, n, cols, desc, nl, rank, ttl_ms, et),
            exchange="hash",
            keys=keys,
        )
        uk = (*keys, rank) if rank is not None else tuple(keys)
        return self.stream._derive(node, uk)

    def agg(self, *, ttl: Duration | None = None, **aggs: _agg.Agg) -> Stream:
        """Running aggregates per key, without a window (Flink SQL's
        ``GROUP BY`` over a dynamic table), e.g.
        ``.agg(n=sl.agg.count(), avg=sl.agg.mean("price"))``.

        Each batch emits one row per key it changed, with the key columns and
        one column per aggregation: an **upsert stream** keyed by the key
        columns (the latest row of a key is its current aggregate). Event time
        of a row: the latest event time seen for its key.

        On an append-only input every row is new and every aggregation of
        ``sl.agg`` works. On an upsert input (``stream.upsert_key`` set, e.g.
        the output of ``top_n``) a row replaces the previous row with the same
        upsert key: its old values are taken out of the aggregate and the new
        ones put in, even when it moved to another key. Only ``count``, ``sum``
        and ``mean`` can be updated that way. A key left with no rows is
        emitted once more with count 0 and null sum/mean, then forgotten.

        State is kept forever unless ``ttl`` is given (append-only input): a
        key's aggregate is then forgotten ``ttl`` after the latest event time
        written to it (by the watermark; on the processing-time clock when the
        stream has no event time), as Flink's state TTL. A later row of that
        key starts a new aggregate, whose row replaces the old one downstream.
        (``ttl`` is therefore not a name for an aggregation.)

        >>> import sluice as sl
        >>> f = sl.Flow("agg"); out = sl.sinks.collect()
        >>> s = f.source([{"cat": "a", "x": 1}, {"cat": "a", "x": 3}, {"cat": "b", "x": 2}])
        >>> s.key_by("cat").agg(n=sl.agg.count(), avg=sl.agg.mean("x")).sink(out)
        >>> _ = f.run()
        >>> sl.materialize(out.to_polars(), "cat").sort("cat").rows()
        [('a', 2, 2.0), ('b', 1, 2.0)]
        """
        from sluice.operators.group_agg import (
            GroupAggOperator,
            UpsertChanges,
            agg_column,
            agg_kind,
            check_upsert_aggs,
        )

        if isinstance(ttl, _agg.Agg):
            raise ConfigError(
                "agg: ttl= is the state time-to-live, not an aggregation name; "
                "call the aggregation something else"
            )
        if not aggs:
            raise ConfigError("agg: give at least one aggregation, e.g. n=sl.agg.count()")
        ttl_ms = None if ttl is None else parse_duration(ttl, what="agg ttl", allow_zero=False)
        keys = list(self.keys)
        for name, a in aggs.items():
            if not isinstance(a, _agg.Agg):
                raise ConfigError(
                    f"agg: {name}= expects an sl.agg.* aggregation, got {type(a).__name__}"
                )
            if name in keys:
                raise ConfigError(f"agg: output name {name!r} collides with a key column")
            if agg_kind(a) in ("first", "last") and not self.stream.event_time:
                raise ConfigError(
                    f"agg: {name}={agg_kind(a)}(...) orders rows by event time; "
                    "the stream has none (give the source time=...)"
                )
        aggs = dict(aggs)
        uk = self.stream.upsert_key
        et = self.stream.event_time
        if uk is None:
            node = self.stream._then(
                "agg",
                lambda i, p: GroupAggOperator("agg", keys, aggs, False, ttl_ms, et),
                exchange="hash",
                keys=keys,
            )
            return self.stream._derive(node, tuple(keys))
        if ttl_ms is not None:
            raise ConfigError(
                f"agg: ttl= needs an append-only input; this stream is an upsert stream "
                f"(upsert key {list(uk)}), whose replaced rows must be taken out of groups "
                "that a TTL may already have forgotten"
            )
        check_upsert_aggs(aggs, uk)
        ukey = list(uk)
        cols = [*keys, *(c for a in aggs.values() if (c := agg_column(a)) is not None)]
        # every version of an upsert key must meet its previous one: partition the
        # changes by the upsert key, unless the group keys already cover it
        by_group = set(ukey) <= set(keys)
        changes = self.stream._then(
            "agg_changes",
            lambda i, p: UpsertChanges("agg_changes", ukey, cols),
            exchange="hash",
            keys=keys if by_group else ukey,
        )
        mid = self.stream._derive(changes)
        node = mid._then(
            "agg",
            lambda i, p: GroupAggOperator("agg", keys, aggs, signed=True),
            exchange="forward" if by_group else "hash",
            keys=() if by_group else keys,
        )
        return self.stream._derive(node, tuple(keys))

    def _keyed(
        self,
        name: str,
        factory: Callable[[int, int], Operator],
        upsert_key: tuple[str, ...] | None = None,
    ) -> KeyedStream:
        node = self.stream._then(name, factory, exchange="hash", keys=list(self.keys))
        return KeyedStream(self.stream._derive(node, upsert_key), self.keys)

    def _upsert_key_kept(self) -> tuple[str, ...] | None:
        """The input's upsert key, if repartitioning by our keys keeps every
        version of an upsert key in one subtask (so in order)."""
        uk = self.stream.upsert_key
        return uk if uk is not None and set(self.keys) <= set(uk) else None

    def filter(self, predicate: pl.Expr) -> KeyedStream:
        """Repartition by key and keep rows where ``predicate`` holds (vectorized).

        The result stays keyed: the next keyed verb runs in the same subtasks.
        """
        return self._keyed(
            "filter", lambda i, n: FilterOp("filter", predicate), self._upsert_key_kept()
        )

    def with_columns(self, *exprs: Any, **named: Any) -> KeyedStream:
        """Repartition by key and add columns (vectorized); keep the key columns."""
        e, nd = list(exprs), dict(named)
        uk = _kept_upsert_key(self._upsert_key_kept(), e, nd, keep_others=True)
        return self._keyed("with_columns", lambda i, n: SelectOp("with_columns", e, nd, True), uk)

    def sink(self, sink: Sink, *, name: str | None = None, parallelism: int | None = None) -> None:
        """Send the stream to ``sink`` partitioned by key: each key's rows go to
        one sink subtask (like a keyed Kafka producer)."""
        node = self.stream._then(
            "partition",
            lambda i, n: Passthrough("partition"),
            exchange="hash",
            keys=list(self.keys),
            parallelism=parallelism,
        )
        self.stream._derive(node).sink(sink, name=name, parallelism=parallelism)

    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Stream:
        """Per-record map after repartitioning by key."""
        keys = list(self.keys)
        node = self.stream._then("map", lambda i, n: MapOp("map", fn), exchange="hash", keys=keys)
        return self.stream._derive(node)


def _per_column(what: str, value: bool | Sequence[bool], cols: list[str]) -> list[bool]:
    """A bool for every sort column (one bool applies to all, like Polars ``sort``)."""
    if isinstance(value, bool):
        return [value] * len(cols)
    vals = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    if vals is None or not all(isinstance(v, bool) for v in vals):
        raise ConfigError(f"top_n: {what} must be a bool or a list of bools, got {value!r}")
    if len(vals) != len(cols):
        raise ConfigError(
            f"top_n: {what} has {len(vals)} value(s) for {len(cols)} sort column(s) {cols}"
        )
    return vals
