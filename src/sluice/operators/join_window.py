"""Window table-valued functions and the window join (Flink SQL ``TUMBLE``/``HOP``
and window joins).

:class:`AssignWindows` adds ``window_start``/``window_end`` to every row (a row
of a sliding window appears once per window it belongs to). The window join
buffers the rows of both inputs per window and joins a window's rows when the
watermark reaches its max timestamp ``window_end - 1``, then drops them; rows
of a window that already fired are late, dropped and counted.
"""

from __future__ import annotations

from math import ceil

import polars as pl

from sluice.errors import ConfigError
from sluice.operators.base import Operator, TwoInputOperator
from sluice.operators.joins import JoinLayout, check_columns, state_frame
from sluice.runtime.messages import MAX_TIME, MIN_TIME, TIME
from sluice.state.snapshot import Snapshot
from sluice.time.windows import Sliding, Tumbling, WindowSpec

WCOLS = ("window_start", "window_end")
WS, WE = "__ws", "__we"
_MAX_CHUNKS = 8


def window_exprs(spec: WindowSpec, k: int = 0) -> tuple[pl.Expr, pl.Expr]:
    """Start and end (epoch ms) of the ``k``-th window of each row's time,
    counted back from the latest (docs/event-time.md)."""
    t = pl.col(TIME)
    if isinstance(spec, Tumbling):
        ws = t - (t - spec.offset_ms) % spec.size_ms
        return ws, ws + spec.size_ms
    assert isinstance(spec, Sliding)
    ws = t - (t - spec.offset_ms) % spec.slide_ms - k * spec.slide_ms
    return ws, ws + spec.size_ms


class AssignWindows(Operator):
    """Adds ``window_start``/``window_end`` (Datetime ms) to each row."""

    def __init__(self, name: str, spec: WindowSpec) -> None:
        super().__init__()
        self.name = name
        self.spec = spec
        self.copies = ceil(spec.size_ms / spec.slide_ms) if isinstance(spec, Sliding) else 1

    def process_batch(self, batch: pl.DataFrame) -> None:
        for c in WCOLS:
            if c in batch.columns:
                raise ConfigError(
                    f"{self.name}: the input already has a column {c!r}; "
                    "rename or drop it before assign_windows"
                )
        parts = []
        for k in range(self.copies):
            ws, we = window_exprs(self.spec, k)
            part = batch.with_columns(
                ws.cast(pl.Datetime("ms")).alias(WCOLS[0]),
                we.cast(pl.Datetime("ms")).alias(WCOLS[1]),
            )
            if k:
                assert isinstance(self.spec, Sliding)
                part = part.filter(ws > pl.col(TIME) - self.spec.size_ms)
            parts.append(part)
        self.emit(pl.concat(parts) if len(parts) > 1 else parts[0])


class WindowJoinOperator(TwoInputOperator):
    """Joins the rows of equal windows and keys once the window closes."""

    def __init__(
        self,
        name: str,
        left_keys: list[str],
        right_keys: list[str],
        how: str,
        suffix: str,
    ) -> None:
        super().__init__()
        self.name = name
        self.layout = JoinLayout(
            name, left_keys, right_keys, suffix, extra_keys=[(WCOLS[0], WS), (WCOLS[1], WE)]
        )
        self.how = how
        self.keyed = bool(left_keys)
        self.chunks: list[list[pl.DataFrame]] = [[], []]
        self.next_fire = MAX_TIME

    def _end_ms(self) -> pl.Expr:
        return pl.col(WE).dt.epoch("ms")

    def process_side(self, side: int, batch: pl.DataFrame) -> None:
        check_columns(self.name, ("left", "right")[side], batch, WCOLS)
        for c in WCOLS:
            dt = batch.schema[c]
            if not isinstance(dt, pl.Datetime):
                raise ConfigError(
                    f"{self.name}: column {c!r} of the {('left', 'right')[side]} input is {dt}, "
                    "expected a Datetime: window_join takes streams from assign_windows(...) "
                    "or .window(...).agg(...)"
                )
        if any(batch.schema[c] != pl.Datetime("ms") for c in WCOLS):
            batch = batch.with_columns(pl.col(*WCOLS).dt.cast_time_unit("ms"))
        b = self.layout.internal(side, batch)
        wm = self.watermark
        first_end = b.select(self._end_ms().min()).item()
        if wm > MIN_TIME and first_end is not None and first_end - 1 <= wm:
            late = b.select(self._end_ms() - 1 <= wm).to_series()
            n_late = int(late.sum())
            if n_late:
                self.metrics.late_dropped += n_late
                self.output.emit_side("late_" + ("left", "right")[side], batch.filter(late))
                b = b.filter(~late)
        if self.how == "inner" or (self.how != "full" and self.how != ("left", "right")[side]):
            b = b.drop_nulls(self.layout.ik)  # an inner side's null keys never match
        if b.height == 0:
            return
        mine = self.chunks[side]
        mine.append(b)
        if len(mine) > _MAX_CHUNKS:
            state_frame(mine)
        mn = b.select(self._end_ms().min()).item() if b.height < batch.height else first_end
        if mn is not None and mn - 1 < self.next_fire:
            self.next_fire = int(mn) - 1

    def on_watermark(self, time: int) -> None:
        if self.next_fire <= time:
            self._fire(time)

    def _fire(self, wm: int) -> None:
        lay = self.layout
        due: list[pl.DataFrame | None] = []
        nxt = MAX_TIME
        for side in (0, 1):
            st = state_frame(self.chunks[side])
            if st is None or st.height == 0:
                due.append(None)
                continue
            is_due = self._end_ms() - 1 <= wm
            due.append(st.filter(is_due))
            rest = st.filter(~is_due)
            self.chunks[side] = [rest] if rest.height else []
            if rest.height:
                nxt = min(nxt, int(rest.select(self._end_ms().min()).item()) - 1)
        self.next_fire = nxt
        left, right = due
        time = (pl.col(WE).dt.epoch("ms") - 1).alias(TIME)
        if left is None or left.height == 0:
            if right is not None and right.height and self.how in ("right", "full"):
                self.emit(lay.pad(right, 1).select(lay.output_exprs(time)))
            return
        if right is None or right.height == 0:
            if self.how in ("left", "full"):
                self.emit(lay.pad(left, 0).select(lay.output_exprs(time)))
            return
        joined = left.join(right, on=lay.on, how=self.how, coalesce=True)  # type: ignore[arg-type]
        self.emit(joined.select(lay.output_exprs(time)))

    def snapshot_state(self) -> Snapshot:
        snap = Snapshot(keys=self.layout.ik, watermark=self.watermark)
        for side, nm in ((0, "left"), (1, "right")):
            st = state_frame(self.chunks[side])
            if st is not None and st.height:
                (snap.keyed if self.keyed else snap.tables)[nm] = st
            schema = self.layout.schema_frame(side)
            if schema is not None:
                snap.tables[nm + "_schema"] = schema
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        nxt = MAX_TIME
        for side, nm in ((0, "left"), (1, "right")):
            self.layout.restore_schema(side, snapshot.tables.get(nm + "_schema"))
            st = snapshot.keyed.get(nm, snapshot.tables.get(nm))
            self.chunks[side] = [st] if st is not None and st.height else []
            if st is not None and st.height:
                nxt = min(nxt, int(st.select(self._end_ms().min()).item()) - 1)
        self.next_fire = nxt
