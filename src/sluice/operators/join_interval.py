"""Interval join: ``right.time BETWEEN left.time + lower AND left.time + upper``.

Flink's interval join (``IntervalJoinOperator``; the outer variants follow
Flink SQL's time-interval join). Both sides are buffered per key as Polars
tables; a new batch is joined against the other side's buffer with one hash
join on the keys and one filter on the times.

Watermark ``wm`` means no row with time <= ``wm`` comes any more, so:

- a row is *late* when its time <= ``wm``: it is dropped and counted in
  ``late_dropped`` (Flink drops it too). Every row that is not late finds all
  its partners: the result is exactly the interval join of the non-late rows.
- a left row can match a future right row only while ``l.t + upper > wm``,
  a right row a future left row only while ``r.t - lower > wm``; once not,
  it is removed (one filter per side), and for an outer side it is emitted
  with the other side's columns null if it never matched.

Because those null-padded rows carry their own (old) time, an outer interval
join holds back the watermark it forwards by ``max(upper, -lower, 0)``, as
Flink SQL does, so they are never late downstream.
"""

from __future__ import annotations

import polars as pl

from sluice.errors import SluiceError
from sluice.operators.base import TwoInputOperator
from sluice.operators.joins import LT, RT, JoinLayout, state_frame
from sluice.runtime.messages import MAX_TIME, MIN_TIME
from sluice.state.snapshot import Snapshot

RID = ("__lrid", "__rrid")
MATCHED = ("__lm", "__rm")
_MAX_CHUNKS = 8


class IntervalJoinOperator(TwoInputOperator):
    """Keyed interval join (inner, left, right or full outer)."""

    def __init__(
        self,
        name: str,
        left_keys: list[str],
        right_keys: list[str],
        lower_ms: int,
        upper_ms: int,
        how: str,
        suffix: str,
    ) -> None:
        super().__init__()
        self.name = name
        self.layout = JoinLayout(name, left_keys, right_keys, suffix)
        self.lower = lower_ms
        self.upper = upper_ms
        self.how = how
        self.outer = (how in ("left", "full"), how in ("right", "full"))
        delays = [0]
        if self.outer[0]:
            delays.append(upper_ms)
        if self.outer[1]:
            delays.append(-lower_ms)
        self.delay = max(delays)
        self.chunks: list[list[pl.DataFrame]] = [[], []]
        #: ids of stored rows matched after they were stored (outer sides only)
        self.matched: list[list[pl.Series]] = [[], []]
        self.next_rid = [0, 0]
        self.next_cleanup = MAX_TIME
        self.forwarded = MIN_TIME

    # -- time bounds ----------------------------------------------------------------
    def _expiry(self, side: int) -> pl.Expr:
        """Watermark from which a stored row of ``side`` can match nothing new."""
        return pl.col(LT) + self.upper if side == 0 else pl.col(RT) - self.lower

    def _in_interval(self) -> pl.Expr:
        return (pl.col(RT) >= pl.col(LT) + self.lower) & (pl.col(RT) <= pl.col(LT) + self.upper)

    # -- data -----------------------------------------------------------------------
    def process_side(self, side: int, batch: pl.DataFrame) -> None:
        lay = self.layout
        b = lay.internal(side, batch)
        tcol = LT if side == 0 else RT
        wm = self.watermark
        if wm > MIN_TIME:
            late = b.get_column(tcol) <= wm
            n_late = int(late.sum())
            if n_late:
                self.metrics.late_dropped += n_late
                self.output.emit_side("late_" + ("left", "right")[side], batch.filter(late))
                b = b.filter(~late)
        nulls = pl.any_horizontal(pl.col(k).is_null() for k in lay.ik)
        no_key = b.filter(nulls)
        if no_key.height:  # null keys never match
            if self.outer[side]:
                self.emit(lay.pad(no_key, side).select(lay.output_exprs()))
            b = b.filter(~nulls)
        if b.height == 0:
            return
        rid = RID[side]
        b = b.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(rid) + self.next_rid[side])
        self.next_rid[side] += b.height
        other = state_frame(self.chunks[1 - side])
        matched_here = pl.lit(False)
        if other is not None and other.height:
            left, right = (b, other) if side == 0 else (other, b)
            joined = left.join(right, on=lay.ik, how="inner").filter(self._in_interval())
            if joined.height:
                self.emit(joined.select(lay.output_exprs()))
                if self.outer[side]:
                    matched_here = pl.col(rid).is_in(joined.get_column(rid).unique().implode())
                if self.outer[1 - side]:
                    self.matched[1 - side].append(joined.get_column(RID[1 - side]).unique())
        b = b.with_columns(matched_here.alias(MATCHED[side]))
        mine = self.chunks[side]
        mine.append(b)
        if len(mine) > _MAX_CHUNKS:
            state_frame(mine)
        mn = b.select(self._expiry(side).min()).item()
        if mn is not None and mn < self.next_cleanup:
            self.next_cleanup = int(mn)
        if self.next_cleanup <= wm:
            self._cleanup(wm)  # rows that can match nothing new (upper < 0 and such)

    def _cleanup(self, wm: int) -> None:
        nxt = MAX_TIME
        for side in (0, 1):
            st = state_frame(self.chunks[side])
            if st is None or st.height == 0:
                continue
            gone = self._expiry(side) <= wm
            if self.outer[side]:
                expired = st.filter(gone)
                if expired.height:
                    done = ~pl.col(MATCHED[side])
                    if self.matched[side]:
                        ids = pl.concat(self.matched[side]).unique()
                        done = done & ~pl.col(RID[side]).is_in(ids.implode())
                    unmatched = expired.filter(done)
                    if unmatched.height:
                        self.emit(
                            self.layout.pad(unmatched, side).select(self.layout.output_exprs())
                        )
            st = st.filter(~gone)
            self.chunks[side] = [st] if st.height else []
            if self.matched[side]:
                ids = pl.concat(self.matched[side]).unique()
                keep = ids.filter(ids.is_in(st.get_column(RID[side]).implode()))
                self.matched[side] = [keep] if keep.len() else []
            if st.height:
                nxt = min(nxt, int(st.select(self._expiry(side).min()).item()))
        self.next_cleanup = nxt

    # -- time -------------------------------------------------------------------------
    def on_watermark(self, time: int) -> None:
        if self.next_cleanup <= time:
            self._cleanup(time)

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
        out = time if time == MAX_TIME else max(MIN_TIME, time - self.delay)
        if out > self.forwarded:
            self.forwarded = out
            self.output.watermark(out)

    # -- checkpoints ----------------------------------------------------------------
    def snapshot_state(self) -> Snapshot:
        snap = Snapshot(keys=self.layout.ik, watermark=self.watermark)
        for side, nm in ((0, "left"), (1, "right")):
            st = state_frame(self.chunks[side])
            if st is not None and st.height:
                m = pl.col(MATCHED[side])
                if self.matched[side]:
                    ids = pl.concat(self.matched[side]).unique()
                    m = m | pl.col(RID[side]).is_in(ids.implode())
                snap.keyed[nm] = st.with_columns(m.alias(MATCHED[side])).drop(RID[side])
            schema = self.layout.schema_frame(side)
            if schema is not None:
                snap.tables[nm + "_schema"] = schema
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        nxt = MAX_TIME
        for side, nm in ((0, "left"), (1, "right")):
            self.layout.restore_schema(side, snapshot.tables.get(nm + "_schema"))
            st = snapshot.keyed.get(nm)
            self.matched[side] = []
            if st is None or st.height == 0:
                self.chunks[side] = []
                continue
            # row ids are per subtask: give the merged rows fresh ones
            st = st.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(RID[side]))
            m = MATCHED[side]
            st = st.select(pl.exclude(m), pl.col(m))  # the column order of new rows
            self.next_rid[side] = st.height
            self.chunks[side] = [st]
            nxt = min(nxt, int(st.select(self._expiry(side).min()).item()))
        self.next_cleanup = nxt
