"""The user's verbs: ``Stream``, ``KeyedStream`` and ``WindowedStream``.

Every method returns a new stream object; nothing runs until ``flow.run()``.
Expressions are Polars expressions and run vectorized on whole batches;
``map``/``flat_map``/``process`` take Python callables and are the slow path.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from sluice.connectors.base import Sink
from sluice.errors import ConfigError
from sluice.operators import aggregations as _agg
from sluice.operators.base import Operator
from sluice.operators.stateless import (
    FilterOp,
    FlatMapOp,
    MapOp,
    Passthrough,
    PredicateOp,
    SelectOp,
)
from sluice.plan.logical import Edge, ExchangeKind, Node
from sluice.time.durations import Duration, parse_duration
from sluice.time.windows import Count, Global, Trigger, WindowSpec

if TYPE_CHECKING:
    from sluice.api.flow import Flow


class Stream:
    """A stream of rows (columnar batches) flowing out of one operator.

    ``upsert_key`` is None for an append-only stream (every row is a new
    fact). Operators whose results change over time (``top_n``, ``agg``) make
    an *upsert stream*: a row replaces the earlier row with the same values
    of the ``upsert_key`` columns (see ``docs/updating-results.md``).
    """

    def __init__(
        self,
        flow: Flow,
        node: Node,
        tag: str = "main",
        *,
        event_time: bool,
        upsert_key: tuple[str, ...] | None = None,
    ) -> None:
        self.flow = flow
        self.node = node
        self.tag = tag
        self.event_time = event_time
        #: Columns identifying the row a newer row replaces; None: append-only.
        self.upsert_key = upsert_key

    # -- internal ------------------------------------------------------------------------
    def _then(
        self,
        name: str,
        factory: Callable[[int, int], Operator],
        *,
        exchange: ExchangeKind = "forward",
        keys: Sequence[str] = (),
        parallelism: int | None = None,
        max_parallelism: int | None = None,
        inputs: list[Edge] | None = None,
    ) -> Node:
        nm = self.flow._unique(name)
        edges = inputs or [Edge(self.node, self.tag, exchange, tuple(keys))]
        return self.flow._add(
            {
                "name": nm,
                "kind": "operator",
                "inputs": edges,
                "factory": _named(factory, nm),
                # forward edges keep the upstream's parallelism (so they chain);
                # an exchange is where parallelism may change: job default
                "parallelism": parallelism
                if parallelism is not None
                else (self.node.parallelism if exchange == "forward" and not inputs else None),
                "max_parallelism": max_parallelism,
                "partitioned_by": tuple(keys) if exchange == "hash" else None,
            }
        )

    def _two_input(
        self,
        other: Stream,
        name: str,
        factory: Callable[[int, int], Operator],
        left_keys: Sequence[str],
        right_keys: Sequence[str],
    ) -> Stream:
        """A node with two inputs (this stream is side 0, ``other`` side 1), each
        hash-partitioned by its own key columns so equal keys meet in one
        subtask. With no keys both sides go to a single subtask."""
        if other.flow is not self.flow:
            raise ConfigError(f"{name}: both streams must belong to the same Flow")
        if len(left_keys) != len(right_keys):
            raise ConfigError(
                f"{name}: {len(left_keys)} key column(s) on the left "
                f"({list(left_keys)}) but {len(right_keys)} on the right ({list(right_keys)})"
            )
        if left_keys:
            edges = [
                Edge(self.node, self.tag, "hash", tuple(left_keys)),
                Edge(other.node, other.tag, "hash", tuple(right_keys)),
            ]
            node = self._then(name, factory, inputs=edges)
        else:
            edges = [
                Edge(self.node, self.tag, "rebalance"),
                Edge(other.node, other.tag, "rebalance"),
            ]
            node = self._then(name, factory, inputs=edges, parallelism=1)
        return Stream(self.flow, node, event_time=self.event_time and other.event_time)

    def _derive(self, node: Node, upsert_key: tuple[str, ...] | None = None) -> Stream:
        return Stream(self.flow, node, event_time=self.event_time, upsert_key=upsert_key)

    # -- upsert streams ------------------------------------------------------------------
    def with_upsert_key(self, *columns: str | Sequence[str]) -> Stream:
        """Declare that a row of this stream replaces the earlier row with the
        same values of ``columns`` (an upsert stream, like a compacted Kafka
        topic); with no columns, declare it append-only. Nothing runs: this
        only tells later operators (:meth:`KeyedStream.agg`) how to read it.
        All versions of one key must arrive in order (one source split, or a
        stream partitioned by that key).

        >>> import sluice as sl
        >>> f = sl.Flow("u")
        >>> prices = f.source([{"sku": "a", "price": 3}]).with_upsert_key("sku")
        >>> prices.upsert_key
        ('sku',)
        """
        flat: list[str] = []
        for c in columns:
            flat.extend([c] if isinstance(c, str) else list(c))
        if not all(isinstance(c, str) and c for c in flat):
            raise ConfigError(f"with_upsert_key: pass column names, got {columns!r}")
        if len(set(flat)) != len(flat):
            raise ConfigError(f"with_upsert_key: the key columns repeat a name: {flat}")
        return Stream(
            self.flow,
            self.node,
            self.tag,
            event_time=self.event_time,
            upsert_key=tuple(flat) or None,
        )

    # -- stateless, vectorized -----------------------------------------------------------
    def filter(self, predicate: pl.Expr | Callable[[dict[str, Any]], bool]) -> Stream:
        """Keep rows where ``predicate`` (a Polars expression) is true. A Python
        callable ``fn(row) -> bool`` also works (slow path).

        >>> import sluice as sl
        >>> f = sl.Flow("f"); out = sl.sinks.collect()
        >>> f.source([{"x": 1}, {"x": 5}]).filter(sl.col("x") > 2).sink(out)
        >>> _ = f.run(); out.rows()
        [{'x': 5}]
        """
        if isinstance(predicate, pl.Expr):
            p = predicate
            node = self._then("filter", lambda i, n: FilterOp("filter", p))
            return self._derive(node, self.upsert_key)
        if callable(predicate):
            fn = predicate
            node = self._then("filter", lambda i, n: PredicateOp("filter", fn))
            return self._derive(node, self.upsert_key)
        raise ConfigError("filter: pass a Polars expression (sl.col('x') > 1) or a function")

    def select(self, *exprs: Any, **named: Any) -> Stream:
        """Keep/compute only the given columns (event time is kept).

        >>> import sluice as sl
        >>> f = sl.Flow("s"); out = sl.sinks.collect()
        >>> f.source([{"x": 1, "y": 2}]).select("x", z=sl.col("y") + 1).sink(out)
        >>> _ = f.run(); out.rows()
        [{'x': 1, 'z': 3}]
        """
        e, nd = list(exprs), dict(named)
        node = self._then("select", lambda i, n: SelectOp("select", e, nd, False))
        return self._derive(node, _kept_upsert_key(self.upsert_key, e, nd, keep_others=False))

    def with_columns(self, *exprs: Any, **named: Any) -> Stream:
        """Add or replace columns computed from Polars expressions."""
        e, nd = list(exprs), dict(named)
        node = self._then("with_columns", lambda i, n: SelectOp("with_columns", e, nd, True))
        return self._derive(node, _kept_upsert_key(self.upsert_key, e, nd, keep_others=True))

    # -- stateless, per record (slow path) -----------------------------------------------
    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Stream:
        """Apply ``fn(row: dict) -> dict`` to every row. This is the slow path
        (one Python call per row); prefer ``with_columns`` with expressions."""
        return self._derive(self._then("map", lambda i, n: MapOp("map", fn)))

    def flat_map(self, fn: Callable[[dict[str, Any]], Iterable[dict[str, Any]]]) -> Stream:
        """Apply ``fn(row) -> iterable of dicts``; each output keeps the input's
        event time (slow path)."""
        return self._derive(self._then("flat_map", lambda i, n: FlatMapOp("flat_map", fn)))

    # -- exchanges -----------------------------------------------------------------------
    def key_by(self, *keys: str | Sequence[str]) -> KeyedStream:
        """Partition the stream by the values of ``keys`` (hash exchange).

        >>> import sluice as sl
        >>> f = sl.Flow("k")
        >>> ks = f.source([{"user": "a", "v": 1}]).key_by("user")
        >>> ks.keys
        ['user']
        """
        flat: list[str] = []
        for k in keys:
            flat.extend([k] if isinstance(k, str) else list(k))
        if not flat:
            raise ConfigError("key_by: give at least one key column")
        return KeyedStream(self, flat)

    def union(self, *others: Stream) -> Stream:
        """Merge streams with the same columns into one (event time: min of watermarks)."""
        edges = [Edge(self.node, self.tag, "forward")]
        for o in others:
            if o.flow is not self.flow:
                raise ConfigError("union: streams must belong to the same Flow")
            edges.append(Edge(o.node, o.tag, "forward"))
        node = self._then("union", lambda i, n: Passthrough("union"), inputs=edges)
        return Stream(self.flow, node, event_time=all(s.event_time for s in (self, *others)))

    def rebalance(self) -> Stream:
        """Spread batches round-robin over the next operator's subtasks."""
        return self._derive(
            self._then("rebalance", lambda i, n: Passthrough("rebalance"), exchange="rebalance")
        )

    def broadcast(self) -> Stream:
        """Send every batch to every subtask of the next operator."""
        return self._derive(
            self._then("broadcast", lambda i, n: Passthrough("broadcast"), exchange="broadcast")
        )

    def with_parallelism(self, parallelism: int) -> Stream:
        """Set the parallelism of the operator that produces this stream."""
        if parallelism < 1:
            raise ConfigError(f"parallelism must be >= 1, got {parallelism}")
        self.node.parallelism = parallelism
        return self

    # -- joins ---------------------------------------------------------------------------
    def _join_sides(
        self, other: Stream, what: str, left_keys: list[str], right_keys: list[str]
    ) -> tuple[Stream, Stream]:
        """Both inputs with their key columns checked and cast to a canonical
        type before the hash exchange (so that equal keys meet)."""
        from sluice.operators.joins import KeyPrep

        if not isinstance(other, Stream):
            raise ConfigError(
                f"{what}: the other input must be a Stream, got {type(other).__name__}"
            )
        if other.flow is not self.flow:
            raise ConfigError(f"{what}: both streams must belong to the same Flow")
        if not left_keys:
            return self, other
        lk, rk = list(left_keys), list(right_keys)
        left = self._derive(self._then(f"{what}_keys_left", lambda i, n: KeyPrep(what, "left", lk)))
        right = other._derive(
            other._then(f"{what}_keys_right", lambda i, n: KeyPrep(what, "right", rk))
        )
        return left, right

    def join(
        self,
        right: Stream,
        on: str | Sequence[str] | None = None,
        *,
        left_on: str | Sequence[str] | None = None,
        right_on: str | Sequence[str] | None = None,
        how: str = "inner",
        ttl: Duration | None = None,
        suffix: str = "_right",
    ) -> Stream:
        """Regular equi-join with another stream (Flink SQL ``JOIN ... ON``).

        Each row joins every row of the other side with the same key that
        arrived before it, so every matching pair comes out once (append-only).
        Both sides are kept in state: forever, or for ``ttl`` after each row's
        event time (by the watermark; processing time if a side has none).
        Output: left columns, then right columns except the right keys (name
        collisions get ``suffix``); event time is the later of the two rows.
        Null keys never match. Only ``how="inner"``: outer joins of unbounded
        streams need retractions; use :meth:`interval_join` or
        :meth:`window_join` for outer joins.

        >>> import sluice as sl
        >>> f = sl.Flow("j"); out = sl.sinks.collect()
        >>> users = f.source([{"uid": 1, "name": "ann"}])
        >>> f.source([{"uid": 1, "item": "pen"}]).join(users, on="uid").sink(out)
        >>> _ = f.run(); out.rows()
        [{'uid': 1, 'item': 'pen', 'name': 'ann'}]
        """
        from sluice.operators.join_regular import RegularJoinOperator
        from sluice.operators.joins import check_how, resolve_keys

        what = "join"
        lk, rk = resolve_keys(what, on, left_on, right_on)
        if how in ("left", "right", "full", "outer"):
            raise ConfigError(
                f"join: how={how!r} is not supported for a regular join of unbounded streams: "
                "an outer regular join must retract its null-padded rows when a match arrives "
                "later (Flink emits updates). Use interval_join(..., how=...) or "
                "window_join(..., how=...) for outer joins; they know when a row can no "
                "longer match"
            )
        check_how(what, how, ("inner",))
        ttl_ms = None if ttl is None else parse_duration(ttl, what="join ttl", allow_zero=False)
        et = self.event_time and right.event_time if isinstance(right, Stream) else False
        left_s, right_s = self._join_sides(right, what, lk, rk)
        sfx = suffix
        return left_s._two_input(
            right_s,
            what,
            lambda i, n: RegularJoinOperator(what, lk, rk, sfx, ttl_ms, et),
            lk,
            rk,
        )

    def interval_join(
        self,
        right: Stream,
        on: str | Sequence[str] | None = None,
        *,
        left_on: str | Sequence[str] | None = None,
        right_on: str | Sequence[str] | None = None,
        lower: Duration = "-5s",
        upper: Duration = "5s",
        how: str = "inner",
        suffix: str = "_right",
    ) -> Stream:
        """Interval join (Flink): rows with equal keys where
        ``left.time + lower <= right.time <= left.time + upper`` (both bounds
        inclusive; ``lower``/``upper`` may be negative, e.g. ``"-5s"``).

        State is kept only while a row can still match. Rows behind the
        watermark are dropped and counted as ``late_dropped``. With
        ``how="left"|"right"|"full"`` a row that matched nothing comes out with
        the other side's columns null once the watermark passes the end of its
        interval; the forwarded watermark is then held back by
        ``max(upper, -lower)`` so these rows are not late downstream.
        Output event time: the later of the two rows.

        >>> import sluice as sl
        >>> f = sl.Flow("ij"); out = sl.sinks.collect()
        >>> clicks = f.source([{"ad": 7, "ct": 1_500}], time="ct")
        >>> views = f.source([{"ad": 7, "vt": 1_000}], time="vt")
        >>> views.interval_join(clicks, on="ad", lower=0, upper="1s").sink(out)
        >>> _ = f.run(); out.rows()
        [{'ad': 7, 'vt': 1000, 'ct': 1500}]
        """
        from sluice.operators.join_interval import IntervalJoinOperator
        from sluice.operators.joins import check_how, resolve_keys, signed_duration

        what = "interval_join"
        lk, rk = resolve_keys(what, on, left_on, right_on)
        check_how(what, how, ("inner", "left", "right", "full"))
        lo = signed_duration(lower, what="interval_join lower bound")
        up = signed_duration(upper, what="interval_join upper bound")
        if lo > up:
            raise ConfigError(
                f"interval_join: lower bound ({lower!r}) is after upper bound ({upper!r})"
            )
        if not (self.event_time and isinstance(right, Stream) and right.event_time):
            raise ConfigError(
                "interval_join: both streams need event time (a source with time=...)"
            )
        left_s, right_s = self._join_sides(right, what, lk, rk)
        sfx = suffix
        return left_s._two_input(
            right_s,
            what,
            lambda i, n: IntervalJoinOperator(what, lk, rk, lo, up, how, sfx),
            lk,
            rk,
        )

    def assign_windows(self, spec: WindowSpec) -> Stream:
        """Add ``window_start`` and ``window_end`` to every row (Flink's
        windowing table-valued functions ``TUMBLE``/``HOP``): a row belongs to
        one tumbling window, or to ``size / slide`` sliding windows (it is
        repeated once per window). Feed the result to :meth:`window_join`.

        >>> import sluice as sl
        >>> f = sl.Flow("tvf"); out = sl.sinks.collect()
        >>> s = f.source([{"x": 1, "t": 1_500}], time="t")
        >>> s.assign_windows(sl.windows.tumbling("1s")).select("x", "window_start").sink(out)
        >>> _ = f.run(); out.rows()
        [{'x': 1, 'window_start': datetime.datetime(1970, 1, 1, 0, 0, 1)}]
        """
        from sluice.operators.join_window import AssignWindows
        from sluice.time.windows import Sliding, Tumbling

        if not isinstance(spec, Tumbling | Sliding):
            raise ConfigError(
                "assign_windows: pass sl.windows.tumbling(...) or sl.windows.sliding(...) "
                f"(got {type(spec).__name__}); session and count windows have no "
                "table-valued form"
            )
        if spec.time != "event" or not self.event_time:
            raise ConfigError(
                "assign_windows: needs an event-time stream (a source with time=...) "
                "and an event-time window"
            )
        return self._derive(
            self._then("assign_windows", lambda i, n: AssignWindows("assign_windows", spec))
        )

    def window_join(
        self,
        right: Stream,
        on: str | Sequence[str] | None = None,
        *,
        left_on: str | Sequence[str] | None = None,
        right_on: str | Sequence[str] | None = None,
        how: str = "inner",
        suffix: str = "_right",
    ) -> Stream:
        """Window join (Flink SQL): join rows of two windowed streams (from
        :meth:`assign_windows` or ``.window(...).agg(...)``) with equal
        ``window_start``, ``window_end`` and keys. A window's rows are joined
        when the watermark passes its end, then forgotten; rows arriving for
        a window that already fired are dropped and counted as
        ``late_dropped``. ``how``: inner, left, right or full. Output: left
        columns, then right columns except keys and window columns; event time
        ``window_end - 1``. Without keys the join runs in one subtask.

        >>> import sluice as sl
        >>> f = sl.Flow("wj"); out = sl.sinks.collect()
        >>> tw = sl.windows.tumbling("1s")
        >>> a = f.source([{"k": 1, "x": 1, "t": 100}], time="t").assign_windows(tw)
        >>> b = f.source([{"k": 1, "y": 2, "t": 900}], time="t").assign_windows(tw)
        >>> a.window_join(b, on="k").select("k", "x", "y").sink(out)
        >>> _ = f.run(); out.rows()
        [{'k': 1, 'x': 1, 'y': 2}]
        """
        from sluice.operators.join_window import WindowJoinOperator
        from sluice.operators.joins import check_how, resolve_keys

        what = "window_join"
        lk, rk = resolve_keys(what, on, left_on, right_on, required=False)
        check_how(what, how, ("inner", "left", "right", "full"))
        if not (self.event_time and isinstance(right, Stream) and right.event_time):
            raise ConfigError(
                "window_join: both streams need event time and window columns: "
                "use assign_windows(...) or .window(...).agg(...) on each"
            )
        left_s, right_s = self._join_sides(right, what, lk, rk)
        sfx = suffix
        return left_s._two_input(
            right_s, what, lambda i, n: WindowJoinOperator(what, lk, rk, how, sfx), lk, rk
        )

    def lookup_join(
        self,
        table: pl.DataFrame | str | os.PathLike[str],
        on: str | Sequence[str] | None = None,
        *,
        left_on: str | Sequence[str] | None = None,
        right_on: str | Sequence[str] | None = None,
        how: str = "inner",
        suffix: str = "_right",
    ) -> Stream:
        """Enrich rows from a static table (Flink lookup join / side input):
        a Polars DataFrame, or a Parquet/CSV file read once when each subtask
        opens. No state, no exchange. ``how``: ``"inner"`` or ``"left"``
        (table columns null when no row matches). Null keys never match.

        >>> import sluice as sl, polars as pl
        >>> f = sl.Flow("lj"); out = sl.sinks.collect()
        >>> names = pl.DataFrame({"code": ["FR"], "country": ["France"]})
        >>> f.source([{"code": "FR", "n": 3}]).lookup_join(names, on="code").sink(out)
        >>> _ = f.run(); out.rows()
        [{'code': 'FR', 'n': 3, 'country': 'France'}]
        """
        from sluice.operators.join_lookup import LookupJoinOp, read_table
        from sluice.operators.joins import check_how, resolve_keys

        what = "lookup_join"
        lk, rk = resolve_keys(what, on, left_on, right_on)
        check_how(what, how, ("inner", "left"))
        if isinstance(table, pl.DataFrame):
            for c in rk:
                if c not in table.columns:
                    raise ConfigError(
                        f"lookup_join: the lookup table has no column {c!r} "
                        f"(its columns: {table.columns})"
                    )
        elif isinstance(table, str | os.PathLike):
            read_table(table, what)  # fail now on a missing or unreadable file
            table = os.fspath(table)
        else:
            raise ConfigError(
                f"lookup_join: table must be a Polars DataFrame or a file path, "
                f"got {type(table).__name__}"
            )
        tbl, sfx = table, suffix
        return self._derive(
            self._then("lookup_join", lambda i, n: LookupJoinOp(what, tbl, lk, rk, how, sfx))
        )

    # -- windows without keys ----------------------------------------------------------
    def window(
        self,
        spec: WindowSpec,
        *,
        allowed_lateness: Duration = 0,
        trigger: Trigger | None = None,
    ) -> WindowedStream:
        """Windows over the whole stream (runs with parallelism 1)."""
        return WindowedStream(self, [], spec, allowed_lateness, trigger)

    # -- outputs -------------------------------------------------------------------------
    def sink(self, sink: Sink, *, name: str | None = None, parallelism: int | None = None) -> None:
        """Send the stream to ``sink``."""
        if not isinstance(sink, Sink):
            raise ConfigError(f"sink: expected an sl.sinks.* sink, got {type(sink).__name__}")
        nm = self.flow._unique(name or sink.name)
        self.flow._add(
            {
                "name": nm,
                "kind": "sink",
                "inputs": [Edge(self.node, self.tag, "forward")],
                "sink": sink,
                "parallelism": parallelism if parallelism is not None else self.node.parallelism,
                "max_parallelism": sink.max_parallelism,
            }
        )

    def dead_letters(self) -> Stream:
        """Records a source could not read (``on_error="dead_letter"``), with
        columns source, file, line, reason, raw."""
        if self.node.kind != "source":
            raise ConfigError("dead_letters() is available on a source's stream")
        return Stream(self.flow, self.node, "dead_letter", event_time=False)

    def __repr__(self) -> str:
        return f"Stream({self.node.name!r})"


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
        keys = list(self.keys)
        node = self.stream._then(
            "top_n",
            lambda i, p: TopNOperator("top_n", keys, n, cols, desc, nl, rank),
            exchange="hash",
            keys=keys,
        )
        uk = (*keys, rank) if rank is not None else tuple(keys)
        return self.stream._derive(node, uk)

    def agg(self, **aggs: _agg.Agg) -> Stream:
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

        if not aggs:
            raise ConfigError("agg: give at least one aggregation, e.g. n=sl.agg.count()")
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
        if uk is None:
            node = self.stream._then(
                "agg",
                lambda i, p: GroupAggOperator("agg", keys, aggs, signed=False),
                exchange="hash",
                keys=keys,
            )
            return self.stream._derive(node, tuple(keys))
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


class WindowedStream:
    """A (keyed) stream with a window assigner; finish it with :meth:`agg`."""

    def __init__(
        self,
        stream: Stream,
        keys: list[str],
        spec: WindowSpec,
        allowed_lateness: Duration,
        trigger: Trigger | None,
    ) -> None:
        if not isinstance(spec, WindowSpec):
            raise ConfigError("window: pass a window from sl.windows (tumbling, sliding, ...)")
        if spec.time == "event" and not stream.event_time and not isinstance(spec, Count | Global):
            raise ConfigError(
                "event-time windows need a source with time=...; for processing-time "
                "windows pass time='processing' to the window"
            )
        if isinstance(spec, Global) and spec.trigger is None:
            raise ConfigError("global window: give a trigger (sl.triggers.count(n) or every(...))")
        self.stream = stream
        self.keys = keys
        self.spec = spec
        self.allowed_lateness = parse_duration(allowed_lateness, what="allowed lateness")
        self.trigger = trigger

    def agg(self, **aggs: _agg.Agg) -> WindowResult:
        """Aggregate each window: ``.agg(n=sl.agg.count(), total=sl.agg.sum("x"))``.

        Results carry the key columns, ``window_start``, ``window_end`` and one
        column per aggregation.
        """
        if not aggs:
            raise ConfigError("agg: give at least one aggregation, e.g. n=sl.agg.count()")
        for name in aggs:
            if name in self.keys or name in ("window_start", "window_end"):
                raise ConfigError(f"agg: output name {name!r} collides with a key or window column")
        keys = list(self.keys)
        spec = self.spec
        lateness = self.allowed_lateness
        trigger = self.trigger
        exchange: ExchangeKind = "hash" if keys else "rebalance"
        par = None if keys else 1
        if isinstance(spec, Count) or (
            isinstance(spec, Global) and spec.trigger is not None and spec.trigger.count
        ):
            from sluice.operators.count_windows import CountWindowOperator

            def factory(i: int, n: int) -> Operator:
                return CountWindowOperator("window", keys, spec, _agg.bind_all(aggs))

        else:
            from sluice.operators.windows import WindowOperator

            def factory(i: int, n: int) -> Operator:
                return WindowOperator("window", keys, spec, _agg.bind_all(aggs), lateness, trigger)

        node = self.stream._then(
            "window", factory, exchange=exchange, keys=keys, parallelism=par, max_parallelism=par
        )
        return WindowResult(self.stream.flow, node, event_time=True)


class WindowResult(Stream):
    """The results of a windowed aggregation; :meth:`late` gives its late rows."""

    def late(self) -> Stream:
        """Input rows that arrived after their window's allowed lateness and were
        not counted (the late side output)."""
        return Stream(self.flow, self.node, "late", event_time=True)


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


def _kept_upsert_key(
    upsert_key: tuple[str, ...] | None,
    exprs: list[Any],
    named: dict[str, Any],
    *,
    keep_others: bool,
) -> tuple[str, ...] | None:
    """The upsert key after ``select`` (``keep_others=False``) or
    ``with_columns``: kept only when every key column provably passes through
    unchanged (named plainly, never recomputed); otherwise None (append-only)."""
    if upsert_key is None:
        return None
    plain: set[str] = set()  # columns passed through as they are
    written: set[str] = set(named)  # columns (re)computed
    for e in exprs:
        if isinstance(e, str):
            if e.startswith("^") and e.endswith("$"):
                return None  # a regex: which columns is unknown
            plain.add(e)
        elif isinstance(e, pl.Expr):
            if e.meta.is_column():
                plain.add(e.meta.output_name())
            elif e.meta.has_multiple_outputs():
                if not (keep_others and e.meta.is_column_selection()):
                    return None  # may recompute (or, in select, drop) a key column
            else:
                try:
                    written.add(e.meta.output_name())
                except pl.exceptions.ComputeError:
                    return None
        else:
            return None
    for k in upsert_key:
        if k in written or (not keep_others and k not in plain):
            return None
    return upsert_key


def _named(factory: Callable[[int, int], Operator], name: str) -> Callable[[int, int], Operator]:
    def make(i: int, n: int) -> Operator:
        op = factory(i, n)
        op.name = name
        return op

    return make
