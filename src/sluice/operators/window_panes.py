"""Sliding windows by panes: the pane state path of the window operator.

Sliding windows (memory backend, event time) are sliced into panes of
``gcd(size, slide)`` as in Flink's window aggregation, Arroyo and RisingWave:
a row is pre-aggregated once, into its pane, the state is one row per
(key, pane), and a firing merges the panes of the windows it closes (one
``group_by`` over pane rows, never over input rows). Every window ending at
or before ``op._fired`` (the watermark, in practice) has fired; a
late-but-allowed row updates its pane and re-fires, at once, every fired
window still kept that holds the pane. Early firings emit the windows of the
panes updated since the last early firing.

Each function takes the :class:`~sluice.operators.windows.WindowOperator`
whose ``panes`` is set and works on its state (``op.state``/``op.pending``
hold pane rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from sluice.errors import JobError
from sluice.operators.partials import PS, Panes
from sluice.operators.window_columns import DIRTY, FIRED, FW, UPD, WE, WS
from sluice.runtime.messages import MAX_TIME, MIN_TIME, TIME
from sluice.time.windows import Sliding

if TYPE_CHECKING:
    from sluice.operators.windows import WindowOperator


def process(op: WindowOperator, batch: pl.DataFrame, p: Panes) -> None:
    """Add a batch's rows to their panes; re-fire fired windows they update."""
    wm = op.watermark
    rows = batch.with_columns(p.pane_start(pl.col(TIME)).alias(PS))
    if wm > MIN_TIME:
        tmin = batch.get_column(TIME).min()
        # a row can only be late for a window when t <= wm - lateness
        if tmin is not None and int(tmin) <= wm - op.lateness:  # type: ignore[arg-type]
            rows = _drop_late(op, batch, rows, wm, p)
            if rows.height == 0:
                return
    part = op.partials.from_rows(rows, op.pgroup)
    op._version += 1
    if op._track:
        part = part.with_columns(pl.lit(op._version, pl.Int64).alias(UPD))
    op.pending.append(part)
    op.pending_rows += part.height
    nf, cl = part.select(
        p.first_end_after(pl.col(PS), op._fired).min().alias("f"),
        p.cleanup(pl.col(PS), op.lateness).min().alias("c"),
    ).row(0)
    if nf is not None and nf < op.next_fire:
        op.next_fire = nf
    if cl is not None and cl < op.next_cleanup:
        op.next_cleanup = cl
    fired = op._fired
    if fired > MIN_TIME and (op.lateness or fired > wm):
        # late-but-allowed rows: re-fire the kept, fired windows of their panes
        kept_after = wm - op.lateness if wm > MIN_TIME else MIN_TIME
        touched = part.filter(pl.col(PS) + (p.pane - 1) <= fired)
        if touched.height:
            targets = p.windows_of(touched, kept_after, fired).select(*op.keys, WS)
            if targets.height:
                _emit_windows(op, targets.unique(), kept_after, fired, p)
    op._early_fire_or_compact()


def _drop_late(
    op: WindowOperator, batch: pl.DataFrame, rows: pl.DataFrame, wm: int, p: Panes
) -> pl.DataFrame:
    late, n = p.late_pairs(pl.col(TIME), wm, op.lateness)
    m = batch.select(late.alias("l"), n.alias("n"))
    el_late = m.get_column("l")
    dropped_pairs = int(m.get_column("n").filter(~el_late).sum())
    if dropped_pairs:
        op.metrics.add("late_window_assignments_dropped", dropped_pairs)
    if not el_late.any():
        return rows
    late_rows = batch.filter(el_late)
    op.metrics.late_dropped += late_rows.height
    op.output.emit_side("late", late_rows)
    return rows.filter(~el_late)


def _emit_windows(
    op: WindowOperator, targets: pl.DataFrame, after: int, upto: int, p: Panes
) -> None:
    """Emit the windows ``targets`` (keys, ``__ws``), all ending in ``(after, upto]``."""
    op._compact()
    st = op.state
    if st is None or st.height == 0:
        return
    st = st.filter((pl.col(PS) + (p.pane - 1) <= upto) & (pl.col(PS) + (p.size - 1) > after))
    if op.keys:
        st = st.join(targets.select(op.keys).unique(), on=op.keys, how="semi")
    wins = p.windows_lazy(st.lazy(), after, upto).join(
        targets.lazy(), on=[*op.keys, WS], how="semi"
    )
    res = op.partials.merge(wins, op.group)
    if res.height:
        op._emit_results(res)


def fire(op: WindowOperator, wm: int, p: Panes) -> None:
    """Emit every window ending in ``(op._fired, wm]``; drop panes past cleanup."""
    # one query from the unmerged partials (state, then batches in arrival
    # order) to the windows: merging a pane's partials and its windows'
    # panes is one group_by; compaction then only keeps the panes still needed
    frames = ([op.state] if op.state is not None else []) + op.pending
    op.pending, op.pending_rows = [], 0
    allp = pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else None
    allp = frames[0] if allp is None and frames else allp
    after = op._fired
    if allp is not None and allp.height and wm > after:
        wins = _closing_windows(op, allp, after, wm, p)
        if wins is not None and wins.height:
            op._emit_results(wins)
    op._fired = max(after, wm)
    if allp is not None:
        if wm == MAX_TIME:
            op.state = allp.clear()
        else:
            keep = allp.filter(p.cleanup(pl.col(PS), op.lateness) > wm)
            op.state = op._merge(keep) if len(frames) > 1 else keep
    op._recompute_bounds()


#: at most this many windows closing at once are merged one by one
_PER_WINDOW = 8


def _closing_windows(
    op: WindowOperator, allp: pl.DataFrame, after: int, wm: int, p: Panes
) -> pl.DataFrame | None:
    """The merged windows ending in ``(after, wm]`` from the pane partials ``allp``.

    A watermark usually closes one or a few windows: each is then merged from
    its own panes (a range of pane starts) with one ``group_by`` on the keys.
    Many at once (the end of input, a jump of the watermark) go through one
    query that lists every pane once per window."""
    ps = pl.col(PS)
    pane_starts = allp.get_column(PS)
    lo, hi = int(pane_starts.min()), int(pane_starts.max())  # type: ignore[arg-type]
    # windows ending in (after, wm] that hold a pane of allp: start in
    # (max(after, lo + size - 1) - size + 1 .. min(wm - size + 1, hi)], on the grid
    first = max(after - p.size + 2, lo - p.size + 1)
    first += (p.offset - first) % p.slide
    last = min(wm - p.size + 1, hi)
    starts = range(first, last + 1, p.slide)
    if not op.keys or len(starts) > _PER_WINDOW:
        due = allp.lazy().filter((ps + (p.pane - 1) <= wm) & (ps + (p.size - 1) > after))
        return op.partials.merge(p.windows_lazy(due, after, wm), op.group)
    out = []
    for ws in starts:
        rows = allp.filter((ps >= ws) & (ps < ws + p.size))
        if rows.height:
            w = op.partials.merge(rows, op.keys)
            out.append(
                w.with_columns(
                    pl.lit(ws, pl.Int64).alias(WS), pl.lit(ws + p.size, pl.Int64).alias(WE)
                )
            )
    return pl.concat(out, how="vertical_relaxed") if out else None


def early_fire(op: WindowOperator, p: Panes) -> None:
    """Emit the windows of the panes updated since the last early firing."""
    op._compact()
    st = op.state
    since, op._early_at = op._early_at, op._version
    if st is None or st.height == 0:
        return
    dirty = st.filter(pl.col(UPD) > since)
    if dirty.height == 0:
        return
    targets = p.windows_of(dirty, op._fired).select(*op.keys, WS)
    if targets.height:
        _emit_windows(op, targets.unique(), op._fired, MAX_TIME, p)


def recompute_bounds(op: WindowOperator, p: Panes) -> None:
    """Set ``op.next_fire`` and ``op.next_cleanup`` from the pane state."""
    st = op.state
    if st is None or st.height == 0:
        op.next_fire = op.next_cleanup = MAX_TIME
        return
    nf, cl = st.select(
        p.first_end_after(pl.col(PS), op._fired).min().alias("f"),
        p.cleanup(pl.col(PS), op.lateness).min().alias("c"),
    ).row(0)
    op.next_fire = MAX_TIME if nf is None else nf
    op.next_cleanup = MAX_TIME if cl is None else cl


def snapshot(op: WindowOperator, st: pl.DataFrame) -> pl.DataFrame:
    """Pane rows plus what is not in them: the fired watermark, and (early
    triggers) whether the pane changed since the last early firing."""
    st = st.with_columns(pl.lit(op._fired, pl.Int64).alias(FW))
    if op._track:
        st = st.with_columns((pl.col(UPD) > op._early_at).alias(DIRTY)).drop(UPD)
    return st


def restore(op: WindowOperator, panes: pl.DataFrame) -> bool:
    """Go on from a pane snapshot; False when this instance cannot (no pane
    slicing here, or old subtasks that had fired up to different watermarks)."""
    fws = panes.get_column(FW).unique()
    if op.panes is None or fws.len() != 1:
        return False
    op._fired = int(fws[0])
    st = panes.drop(FW)
    dirty = pl.col(DIRTY) if DIRTY in st.columns else pl.lit(True)
    if op._track:
        st = st.with_columns(dirty.cast(pl.Int64).alias(UPD))
        op._version, op._early_at = 1, 0
    op.state = st.drop(DIRTY, strict=False)
    op.pending = []
    op.pending_rows = 0
    op._recompute_bounds()
    return True


def windows_from_panes(op: WindowOperator, panes: pl.DataFrame) -> pl.DataFrame:
    """The one-row-per-window table of a pane snapshot (flags as the window
    path keeps them): for a restore on the RocksDB backend, for instance."""
    spec = op.spec
    if not isinstance(spec, Sliding):
        raise JobError(
            f"window operator {op.name!r}: the checkpoint holds sliding-window panes "
            f"but the job now has a {type(spec).__name__} window; restore it with the "
            "window it was written with"
        )
    p = Panes(spec.size_ms, spec.slide_ms, spec.offset_ms)
    dirty = pl.col(DIRTY) if DIRTY in panes.columns else pl.lit(True)
    wins = p.windows_of(panes.with_columns(dirty.alias("__pd"))).filter(
        pl.col(WE) - 1 + op.lateness > pl.col(FW)
    )
    fired = (pl.col(WE) - 1 <= pl.col(FW)).all().alias(FIRED)
    merged = op.partials.merge(wins, op.group, [fired, pl.col("__pd").any().alias(DIRTY)])
    merged = merged.with_columns((pl.col(DIRTY) & ~pl.col(FIRED)).alias(DIRTY))
    return merged.select(*op.group, *op.partials.cols, DIRTY, FIRED)
