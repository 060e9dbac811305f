"""Non-windowed (running) aggregation per group key, over an append-only or an
upsert stream: Flink SQL's ``GROUP BY`` without a window, run in mini-batches.

Two operators:

* :class:`UpsertChanges` (only for an upsert input) runs partitioned by the
  input's *upsert key*. It keeps the latest row of every upsert key and turns
  each batch into signed changes: ``-1`` for the row being replaced (the
  previous version, wherever its group was) and ``+1`` for its new version.
  Several updates of one upsert key in a batch collapse to the last one.
* :class:`GroupAggOperator` runs partitioned by the group keys. Its state is
  one row of accumulators per group; a batch of (signed) rows is reduced per
  group with one ``group_by``, merged into the stored accumulators of the
  groups it touches, and the new aggregate of each touched group is emitted:
  an upsert stream keyed by the group keys.

``count``, ``sum`` and ``mean`` are invertible (kept as signed sums and
counts), so retractions are exact (up to floating-point rounding of float
sums). Every other aggregation is kept as the mergeable partial the windows
use, which is only possible when nothing is ever retracted: an append-only
input. A group whose rows were all retracted (its rows moved to other groups)
is emitted once more with ``count`` 0 and null ``sum``/``mean`` (SQL's
aggregates over no rows) and then forgotten.

With a TTL (append-only input) a group's state expires ``ttl`` after the
latest event time written to it, by the watermark (or ``ttl`` after its last
update on the processing-time clock when the stream has no event time), like
Flink's state TTL counted from the last write. An expired group is never
merged again, even before it is cleaned up: its next row starts a new group,
whose row replaces the old one downstream. Nothing is emitted when a group
expires.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from sluice.errors import ConfigError
from sluice.operators.aggregations import Agg, _Custom, _Quantile, _Simple
from sluice.operators.base import Operator
from sluice.operators.partials import Partials
from sluice.operators.topn import align_nulls
from sluice.runtime.messages import MAX_TIME, TIME
from sluice.state.snapshot import Snapshot

SIGN, N, TMAX, EXP = "__sign", "__n", "__tmax", "__exp"
INVERTIBLE = ("count", "sum", "mean")


def agg_column(a: Agg) -> str | None:
    """The input column an aggregation reads (None: whole rows)."""
    if isinstance(a, _Simple | _Quantile | _Custom):
        return a.column
    return None  # pragma: no cover - every Agg is one of those


def agg_kind(a: Agg) -> str:
    if isinstance(a, _Simple):
        return a.kind
    return "quantile" if isinstance(a, _Quantile) else "custom"


def check_upsert_aggs(aggs: dict[str, Agg], upsert_key: tuple[str, ...]) -> None:
    """Over an upsert stream only invertible aggregations can follow updates."""
    for name, a in aggs.items():
        kind = agg_kind(a)
        if kind not in INVERTIBLE:
            raise ConfigError(
                f"agg: {name}={kind}(...) cannot follow an upsert stream (upsert key "
                f"{list(upsert_key)}): when a row is replaced its old value must be taken "
                f"out of the aggregate, which only {', '.join(INVERTIBLE)} can do. "
                "Aggregate an append-only stream instead (e.g. before top_n), or use a "
                "window"
            )


@dataclass
class _Inv:
    """An invertible aggregation: signed sum ``s`` and signed non-null count ``n``."""

    out: str
    kind: str
    column: str | None
    s: str
    n: str

    def partial(self) -> list[pl.Expr]:
        sign = pl.col(SIGN)
        if self.column is None:  # count(*) is the group's row count
            return []
        c = pl.col(self.column)
        nn = (sign * c.is_not_null().cast(pl.Int64)).sum().alias(self.n)
        if self.kind == "count":
            return [nn]
        val = c.cast(pl.Float64) if self.kind == "mean" else c
        return [(sign * val).fill_null(0).sum().alias(self.s), nn]

    def merge(self) -> list[pl.Expr]:
        if self.column is None:
            return []
        if self.kind == "count":
            return [pl.col(self.n).sum()]
        return [pl.col(self.s).sum(), pl.col(self.n).sum()]

    def final(self) -> pl.Expr:
        if self.column is None:
            return pl.col(N).alias(self.out)
        if self.kind == "count":
            return pl.col(self.n).alias(self.out)
        res = pl.col(self.s) / pl.col(self.n) if self.kind == "mean" else pl.col(self.s)
        return pl.when(pl.col(self.n) > 0).then(res).otherwise(None).alias(self.out)

    def cols(self) -> list[str]:
        if self.column is None:
            return []
        return [self.n] if self.kind == "count" else [self.s, self.n]


class GroupAggOperator(Operator):
    """Running aggregates per group key; emits the groups each batch updated."""

    def __init__(
        self,
        name: str,
        keys: list[str],
        aggs: dict[str, Agg],
        signed: bool,
        ttl_ms: int | None = None,
        event_time: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.keys = keys
        self.signed = signed
        self.ttl = ttl_ms
        self.event_time = event_time
        self.next_expiry = MAX_TIME
        self.order = list(aggs)
        self.inv: list[_Inv] = []
        others: dict[str, Agg] = {}
        for i, (out, a) in enumerate(aggs.items()):
            kind = agg_kind(a)
            if kind in INVERTIBLE:
                p = f"__g{i}"
                self.inv.append(_Inv(out, kind, agg_column(a), p + "_s", p + "_n"))
            else:
                others[out] = a
        self.partials = Partials(
            [a.bind(out, f"__p{i}") for i, (out, a) in enumerate(others.items())]
        )
        self.columns = [c for a in aggs.values() if (c := agg_column(a)) is not None]
        self.state: pl.DataFrame | None = None
        self._checked = False

    def _check(self, batch: pl.DataFrame) -> None:
        shown = [c for c in batch.columns if not c.startswith("__")]
        for what, cols in (("group key", self.keys), ("aggregated", self.columns)):
            for c in cols:
                if c not in batch.columns:
                    raise ConfigError(
                        f"agg: the input has no {what} column {c!r} (its columns: {shown})"
                    )
        self._checked = True

    # -- TTL ---------------------------------------------------------------------------
    def _now(self) -> int:
        """The time TTL is measured against (watermark or processing clock)."""
        if self.event_time:
            return self.watermark
        assert self.ctx is not None
        return self.ctx.now()

    def _expiry(self) -> pl.Expr:
        return pl.col(TMAX) + self.ttl if self.event_time else pl.col(EXP)

    def _expire(self, now: int) -> None:
        """Forget the groups whose TTL has passed at ``now``."""
        st = self.state
        if st is None or st.height == 0:
            self.next_expiry = MAX_TIME
            return
        exp = st.select(self._expiry().alias("e")).get_column("e")
        alive = exp > now
        if not alive.all():
            self.metrics.add("groups_expired", int((~alive).sum()))
            st = st.filter(alive)
            exp = exp.filter(alive)
        self.state = st if st.height else None
        mn = exp.min()
        self.next_expiry = MAX_TIME if mn is None else int(mn)  # type: ignore[arg-type]

    def on_watermark(self, time: int) -> None:
        if self.ttl is not None and self.event_time and self.next_expiry <= time < MAX_TIME:
            self._expire(time)

    # -- data ----------------------------------------------------------------------------
    def process_batch(self, batch: pl.DataFrame) -> None:
        if not self._checked:
            self._check(batch)
        keys = self.keys
        now = MAX_TIME
        if self.ttl is not None:
            now = self._now()
            if self.next_expiry <= now:
                self._expire(now)  # an expired group is never merged again
        rows = batch if self.signed else batch.with_columns(pl.lit(1, pl.Int64).alias(SIGN))
        has_time = TIME in rows.columns
        extra = [pl.col(SIGN).sum().alias(N), *(e for a in self.inv for e in a.partial())]
        merge = [pl.col(N).sum(), *(e for a in self.inv for e in a.merge())]
        if has_time:
            extra.append(pl.col(TIME).max().alias(TMAX))
            merge.append(pl.col(TMAX).max())
        delta = self.partials.from_rows(rows, keys, extra)
        old = None
        rest: pl.DataFrame | None
        if self.state is not None and self.state.height:
            delta = align_nulls(delta, self.state)
            old = self.state.join(delta.select(keys), on=keys, how="semi", nulls_equal=True)
        if old is not None and old.height:
            both = pl.concat([old.select(delta.columns), delta], how="vertical_relaxed")
            merged = self.partials.merge(both, keys, merge)
            assert self.state is not None
            rest = self.state.join(delta.select(keys), on=keys, how="anti", nulls_equal=True)
        else:
            merged = delta
            rest = self.state
        live = merged.filter(pl.col(N) > 0)
        if self.ttl is not None:
            if not self.event_time:
                live = live.with_columns(pl.lit(now + self.ttl, pl.Int64).alias(EXP))
            mn = live.select(self._expiry().min()).item() if live.height else None
            if mn is not None and int(mn) < self.next_expiry:
                self.next_expiry = int(mn)
        if rest is not None and rest.height:
            live = pl.concat([rest, live], how="vertical_relaxed")
        self.state = live
        res = self.partials.results(merged.with_columns(a.final() for a in self.inv))
        cols = [*keys, *self.order]
        out = res.select(*cols, pl.col(TMAX).alias(TIME)) if has_time else res.select(cols)
        self.metrics.add("groups_updated", out.height)
        self.emit(out)

    def state_rows(self) -> int:
        return 0 if self.state is None else self.state.height

    def snapshot_state(self) -> Snapshot:
        snap = Snapshot(keys=self.keys, watermark=self.watermark)
        if self.state is not None and self.state.height:
            snap.keyed["groups"] = self.state
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        st = snapshot.keyed.get("groups")
        self.state = st if st is not None and st.height else None
        self.next_expiry = MAX_TIME
        if self.ttl is not None and self.state is not None:
            if not self.event_time and EXP not in self.state.columns:  # saved without a TTL
                self.state = self.state.with_columns(pl.lit(self._now() + self.ttl).alias(EXP))
            mn = self.state.select(self._expiry().min()).item()
            self.next_expiry = MAX_TIME if mn is None else int(mn)


class UpsertChanges(Operator):
    """Latest row per upsert key; turns updates into ``-1`` old / ``+1`` new rows."""

    def __init__(self, name: str, upsert_key: list[str], columns: list[str]) -> None:
        super().__init__()
        self.name = name
        self.ukey = upsert_key
        self.columns = list(dict.fromkeys([*upsert_key, *columns]))
        self.state: pl.DataFrame | None = None
        self._checked = False

    def _check(self, batch: pl.DataFrame) -> None:
        shown = [c for c in batch.columns if not c.startswith("__")]
        for c in self.columns:
            if c not in batch.columns:
                what = "upsert key" if c in self.ukey else "group key or aggregated"
                raise ConfigError(
                    f"agg: the input has no {what} column {c!r} (its columns: {shown})"
                )
        self._checked = True

    def process_batch(self, batch: pl.DataFrame) -> None:
        if not self._checked:
            self._check(batch)
        cols = [*self.columns, TIME] if TIME in batch.columns else self.columns
        new = batch.select(cols).unique(self.ukey, keep="last", maintain_order=True)
        parts = []
        if self.state is not None and self.state.height:
            new = align_nulls(new, self.state)
            ks = new.select(self.ukey)
            old = self.state.join(ks, on=self.ukey, how="semi", nulls_equal=True)
            if old.height:
                parts.append(old.with_columns(pl.lit(-1, pl.Int64).alias(SIGN)))
                rest = self.state.join(ks, on=self.ukey, how="anti", nulls_equal=True)
                self.state = pl.concat([rest, new], how="vertical_relaxed")
            else:
                self.state = pl.concat([self.state, new], how="vertical_relaxed")
        else:
            self.state = new
        parts.append(new.with_columns(pl.lit(1, pl.Int64).alias(SIGN)))
        self.emit(pl.concat(parts, how="vertical_relaxed"))

    def state_rows(self) -> int:
        return 0 if self.state is None else self.state.height

    def snapshot_state(self) -> Snapshot:
        snap = Snapshot(keys=self.ukey, watermark=self.watermark)
        if self.state is not None and self.state.height:
            snap.keyed["latest"] = self.state
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        st = snapshot.keyed.get("latest")
        self.state = st if st is not None and st.height else None
