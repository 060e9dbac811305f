"""``Stream``: the user's verbs on a stream of rows (stateless steps,
exchanges, joins, sinks); ``key_by`` and ``window`` lead to the keyed and
windowed verbs.

Every method returns a new stream object; nothing runs until ``flow.run()``.
Expressions are Polars expressions and run vectorized on whole batches;
``map``/``flat_map``/``process`` take Python callables and are the slow path.
``KeyedStream`` (:mod:`sluice.api.keyed`), ``WindowedStream`` and
``WindowResult`` (:mod:`sluice.api.windowed`) are re-exported from here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from sluice.connectors.base import Sink
from sluice.errors import ConfigError
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
from sluice.time.windows import Trigger, WindowSpec

if TYPE_CHECKING:
    from sluice.api.flow import Flow

__all__ = ["KeyedStream", "Stream", "WindowResult", "WindowedStream"]


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


# Imported last, once Stream and the helpers above exist: these modules build on
# them (WindowResult subclasses Stream); Stream.key_by/window return their types.
from sluice.api.keyed import KeyedStream  # noqa: E402
from sluice.api.windowed import WindowedStream, WindowResult  # noqa: E402
