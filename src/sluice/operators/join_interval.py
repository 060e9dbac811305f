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
  it is removed, and for an outer side it is emitted with the other side's
  columns null if it never matched. Each side is kept as a few chunks that
  know the range of their rows' expiry, so a watermark drops whole expired
  chunks and filters only those that straddle it (input in time order touches
  one chunk per watermark).
- only an outer side numbers its rows and tracks which of them matched.

Because those null-padded rows carry their own (old) time, an outer interval
join holds back the watermark it forwards by ``max(upper, -lower, 0)``, as
Flink SQL does, so they are never late downstream.
"""

from __future__ import annotations

from itertools import pairwise

import polars as pl

from sluice.errors import SluiceError
from sluice.operators.base import TwoInputOperator
from sluice.operators.joins import LT, RT, JoinLayout
from sluice.runtime.messages import MAX_TIME, MIN_TIME
from sluice.state.snapshot import Snapshot

RID = ("__lrid", "__rrid")
MATCHED = ("__lm", "__rm")
_MAX_CHUNKS = 8


class _Side:
    """The stored rows of one input: chunks in arrival order, each with the
    smallest and largest expiry (watermark from which a row can match nothing
    new) of its rows."""

    __slots__ = ("_frame", "chunks", "hi", "lo")

    def __init__(self) -> None:
        self.chunks: list[pl.DataFrame] = []
        self.lo: list[int] = []
        self.hi: list[int] = []
        self._frame: pl.DataFrame | None = None

    def add(self, rows: pl.DataFrame, lo: int, hi: int) -> None:
        self.chunks.append(rows)
        self.lo.append(lo)
        self.hi.append(hi)
        self._frame = None
        if len(self.chunks) > _MAX_CHUNKS:
            # merge the adjacent pair with the fewest rows (sizes grow like an LSM
            # tree's; neighbours in time keep the merged expiry range narrow)
            sizes = [a.height + b.height for a, b in pairwise(self.chunks)]
            i = sizes.index(min(sizes))
            self.chunks[i : i + 2] = [
                pl.concat(self.chunks[i : i + 2], how="vertical_relaxed", rechunk=True)
            ]
            self.lo[i : i + 2] = [min(self.lo[i : i + 2])]
            self.hi[i : i + 2] = [max(self.hi[i : i + 2])]

    def frame(self) -> pl.DataFrame | None:
        """All stored rows as one frame (None if there are none)."""
        if self._frame is None and self.chunks:
            self._frame = (
                self.chunks[0]
                if len(self.chunks) == 1
                else pl.concat(self.chunks, how="vertical_relaxed", rechunk=False)
            )
        return self._frame

    def set(self, rows: pl.DataFrame | None, lo: int = 0, hi: int = 0) -> None:
        self.chunks, self.lo, self.hi, self._frame = [], [], [], None
        if rows is not None and rows.height:
            self.add(rows, lo, hi)

    def min_expiry(self) -> int:
        return min(self.lo) if self.lo else MAX_TIME

    def take_expired(self, wm: int, expiry: pl.Expr) -> list[pl.DataFrame]:
        """Remove the rows whose expiry <= ``wm``; returns them."""
        gone: list[pl.DataFrame] = []
        for i in range(len(self.chunks) - 1, -1, -1):
            if self.lo[i] > wm:
                continue
            c = self.chunks[i]
            if self.hi[i] <= wm:
                gone.append(c)
                del self.chunks[i], self.lo[i], self.hi[i]
                continue
            exp = c.select(expiry.alias("e")).get_column("e")
            mask = exp <= wm
            gone.append(c.filter(mask))
            keep = ~mask
            self.chunks[i] = c.filter(keep)
            rest = exp.filter(keep)
            self.lo[i] = int(rest.min())  # type: ignore[arg-type]
            self.hi[i] = int(rest.max())  # type: ignore[arg-type]
        if gone:
            self._frame = None
        gone.reverse()
        return gone


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
        self.sides = (_Side(), _Side())
        #: ids of stored rows matched after they were stored (outer sides only)
        self.matched: list[list[pl.Series]] = [[], []]
        self.next_rid = [0, 0]
        self.next_cleanup = MAX_TIME
        self.forwarded = MIN_TIME

    # -- time bounds ----------------------------------------------------------------
    def _shift(self, side: int) -> int:
        """Expiry of a stored row of ``side`` minus its time."""
        return self.upper if side == 0 else -self.lower

    def _expiry(self, side: int) -> pl.Expr:
        """Watermark from which a stored row of ``side`` can match nothing new."""
        return pl.col(LT if side == 0 else RT) + self._shift(side)

    def _in_interval(self) -> pl.Expr:
        return (pl.col(RT) >= pl.col(LT) + self.lower) & (pl.col(RT) <= pl.col(LT) + self.upper)

    # -- data -----------------------------------------------------------------------
    def process_side(self, side: int, batch: pl.DataFrame) -> None:
        lay = self.layout
        b = lay.internal(side, batch)
        tcol = LT if side == 0 else RT
        wm = self.watermark
        if wm > MIN_TIME:
            first = b.get_column(tcol).min()
            if first is not None and int(first) <= wm:  # type: ignore[arg-type]
                late = b.get_column(tcol) <= wm
                self.metrics.late_dropped += int(late.sum())
                self.output.emit_side("late_" + ("left", "right")[side], batch.filter(late))
                b = b.filter(~late)
        if any(b.get_column(k).null_count() for k in lay.ik):
            nulls = pl.any_horizontal(pl.col(k).is_null() for k in lay.ik)
            if self.outer[side]:  # null keys never match
                self.emit(lay.pad(b.filter(nulls), side).select(lay.output_exprs()))
            b = b.filter(~nulls)
        if b.height == 0:
            return
        track = self.outer[side]
        rid = RID[side]
        if track:
            ids = pl.int_range(pl.len(), dtype=pl.Int64) + self.next_rid[side]
            b = b.with_columns(ids.alias(rid))
            self.next_rid[side] += b.height
        other = self.sides[1 - side].frame()
        matched_here = pl.lit(False)
        if other is not None and other.height:
            left, right = (b, other) if side == 0 else (other, b)
            joined = left.join(right, on=lay.ik, how="inner").filter(self._in_interval())
            if joined.height:
                self.emit(joined.select(lay.output_exprs()))
                if track:
                    matched_here = pl.col(rid).is_in(joined.get_column(rid).unique().implode())
                if self.outer[1 - side]:
                    self.matched[1 - side].append(joined.get_column(RID[1 - side]).unique())
        if track:
            b = b.with_columns(matched_here.alias(MATCHED[side]))
        times = b.get_column(tcol)
        shift = self._shift(side)
        lo = int(times.min()) + shift  # type: ignore[arg-type]
        self.sides[side].add(b, lo, int(times.max()) + shift)  # type: ignore[arg-type]
        if lo < self.next_cleanup:
            self.next_cleanup = lo
        if self.next_cleanup <= wm:
            self._cleanup(wm)  # rows that can match nothing new (upper < 0 and such)

    def _cleanup(self, wm: int) -> None:
        for side in (0, 1):
            buf = self.sides[side]
            expired = buf.take_expired(wm, self._expiry(side))
            if self.outer[side] and expired:
                done = ~pl.col(MATCHED[side])
                if self.matched[side]:
                    ids = pl.concat(self.matched[side]).unique()
                    done = done & ~pl.col(RID[side]).is_in(ids.implode())
                for rows in expired:
                    unmatched = rows.filter(done)
                    if unmatched.height:
                        self.emit(
                            self.layout.pad(unmatched, side).select(self.layout.output_exprs())
                        )
            if self.matched[side] and expired:
                ids = pl.concat(self.matched[side]).unique()
                st = buf.frame()
                keep = (
                    ids.filter(ids.is_in(st.get_column(RID[side]).implode()))
                    if st is not None
                    else ids.clear()
                )
                self.matched[side] = [keep] if keep.len() else []
        self.next_cleanup = min(self.sides[0].min_expiry(), self.sides[1].min_expiry())

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
            st = self.sides[side].frame()
            if st is not None and st.height:
                if self.outer[side]:
                    m = pl.col(MATCHED[side])
                    if self.matched[side]:
                        ids = pl.concat(self.matched[side]).unique()
                        m = m | pl.col(RID[side]).is_in(ids.implode())
                    st = st.with_columns(m.alias(MATCHED[side])).drop(RID[side])
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
            self.matched[side] = []
            self.next_rid[side] = 0
            if st is None or st.height == 0:
                self.sides[side].set(None)
                continue
            m = MATCHED[side]
            if self.outer[side]:
                # row ids are per subtask: give the merged rows fresh ones
                if m not in st.columns:  # stored by an inner join of the same name
                    st = st.with_columns(pl.lit(False).alias(m))
                st = st.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(RID[side]))
                st = st.select(pl.exclude(m), pl.col(m))  # the column order of new rows
                self.next_rid[side] = st.height
            elif m in st.columns:
                st = st.drop(m)
            exp = st.select(self._expiry(side).alias("e")).get_column("e")
            self.sides[side].set(st, int(exp.min()), int(exp.max()))  # type: ignore[arg-type]
        self.next_cleanup = min(self.sides[0].min_expiry(), self.sides[1].min_expiry())
