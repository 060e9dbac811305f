"""Regular (unbounded) inner equi-join, Flink SQL's ``JOIN ... ON a.k = b.k``.

Both sides are kept in keyed state, as per-side Polars tables built from
appended chunks. A new batch from one side is joined (one hash join) against
everything stored from the other side, then appended to its own side, so each
matching pair is emitted exactly once, when its later row arrives: the output
is append-only.

With a TTL each stored row expires ``ttl`` after its event time (by the
watermark) or after its arrival (processing time, when a side has no event
time), like Flink's state TTL counted from the last write. Expired rows never
match, even before the watermark or a batch cleans them up.
"""

from __future__ import annotations

import polars as pl

from sluice.operators.base import TwoInputOperator
from sluice.operators.joins import LT, RT, JoinLayout, state_frame
from sluice.runtime.messages import MAX_TIME
from sluice.state.snapshot import Snapshot

EXP = "__exp"
_MAX_CHUNKS = 8


class RegularJoinOperator(TwoInputOperator):
    """Inner equi-join of two unbounded streams."""

    def __init__(
        self,
        name: str,
        left_keys: list[str],
        right_keys: list[str],
        suffix: str,
        ttl_ms: int | None,
        event_time: bool,
    ) -> None:
        super().__init__()
        self.name = name
        self.layout = JoinLayout(name, left_keys, right_keys, suffix)
        self.ttl = ttl_ms
        self.event_time = event_time
        self.chunks: list[list[pl.DataFrame]] = [[], []]
        self.next_expiry = MAX_TIME

    def _now(self) -> int:
        """The time TTL is measured against (watermark or processing clock)."""
        if self.event_time:
            return self.watermark
        assert self.ctx is not None
        return self.ctx.now()

    def process_side(self, side: int, batch: pl.DataFrame) -> None:
        lay = self.layout
        b = lay.internal(side, batch).drop_nulls(lay.ik)  # null keys never match
        if b.height == 0:
            return
        now = self._now()
        if self.ttl is not None:
            if self.event_time:
                b = b.with_columns((pl.col(LT if side == 0 else RT) + self.ttl).alias(EXP))
            else:
                b = b.with_columns(pl.lit(now + self.ttl, pl.Int64).alias(EXP))
            if not self.event_time and self.next_expiry <= now:
                self._expire(now)
        other = state_frame(self.chunks[1 - side])
        if other is not None and other.height:
            probe = b
            if self.ttl is not None:
                other = other.filter(pl.col(EXP) > now).drop(EXP)
                probe = b.drop(EXP)
            left, right = (probe, other) if side == 0 else (other, probe)
            joined = left.join(right, on=lay.ik, how="inner")
            if joined.height:
                self.emit(joined.select(lay.output_exprs()))
        mine = self.chunks[side]
        mine.append(b)
        if len(mine) > _MAX_CHUNKS:
            state_frame(mine)
        if self.ttl is not None:
            mn = b.get_column(EXP).min()
            if mn is not None and int(mn) < self.next_expiry:  # type: ignore[arg-type]
                self.next_expiry = int(mn)  # type: ignore[arg-type]

    def _expire(self, now: int) -> None:
        nxt = MAX_TIME
        for side in (0, 1):
            st = state_frame(self.chunks[side])
            if st is None:
                continue
            st = st.filter(pl.col(EXP) > now)
            self.chunks[side] = [st] if st.height else []
            mn = st.get_column(EXP).min() if st.height else None
            if mn is not None:
                nxt = min(nxt, int(mn))  # type: ignore[arg-type]
        self.next_expiry = nxt

    def on_watermark(self, time: int) -> None:
        if self.ttl is not None and self.event_time and self.next_expiry <= time < MAX_TIME:
            self._expire(time)

    def state_rows(self) -> tuple[int, int]:
        """Rows held per side (for tests and metrics)."""
        return tuple(sum(c.height for c in self.chunks[s]) for s in (0, 1))  # type: ignore[return-value]

    def snapshot_state(self) -> Snapshot:
        snap = Snapshot(keys=self.layout.ik, watermark=self.watermark)
        for side, nm in ((0, "left"), (1, "right")):
            st = state_frame(self.chunks[side])
            if st is not None and st.height:
                snap.keyed[nm] = st
            schema = self.layout.schema_frame(side)
            if schema is not None:
                snap.tables[nm + "_schema"] = schema
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        for side, nm in ((0, "left"), (1, "right")):
            self.layout.restore_schema(side, snapshot.tables.get(nm + "_schema"))
            st = snapshot.keyed.get(nm)
            self.chunks[side] = [st] if st is not None and st.height else []
        if self.ttl is not None:
            mins = [c.get_column(EXP).min() for cs in self.chunks for c in cs]
            vals = [int(m) for m in mins if m is not None]  # type: ignore[arg-type]
            self.next_expiry = min(vals, default=MAX_TIME)
