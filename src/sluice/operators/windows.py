"""Keyed window aggregation: tumbling, sliding, session and global windows.

State is a table of partial aggregates, one row per (key, window), plus two
flags: ``__dirty`` (changed since last emitted) and ``__fired`` (final firing
done). New partials are appended and merged lazily (when something is due to
fire, or when enough has piled up), so the hot path is one vectorized
``group_by`` per batch.

Firing (docs/event-time.md): a window fires when the watermark reaches
``end - 1``; with allowed lateness its state is kept until ``end - 1 + L``
and a late-but-allowed update re-fires it at once; elements whose windows are
all past cleanup go to the ``late`` side output and are counted.

With the RocksDB state backend (``sl.Flow(state_backend="rocksdb")``) the same
table lives in RocksDB, one row per (key, window), in window-end order
(:class:`sluice.state.rocks_tables.RocksWindowStore`): each batch is
pre-aggregated with Polars, merged with the stored rows of the windows it
touches (one multi-get) and written back; a watermark fires a range scan of
the windows it closes. Only a batch's worth of state is in memory at a time.

Sliding windows (memory backend, event time) are sliced into panes of
``gcd(size, slide)`` as in Flink's window aggregation, Arroyo and RisingWave:
a row is pre-aggregated once, into its pane, the state is one row per
(key, pane), and a firing merges the panes of the windows it closes (one
``group_by`` over pane rows, never over input rows). Every window ending at
or before ``_fired`` (the watermark, in practice) has fired; a late-but-allowed
row updates its pane and re-fires, at once, every fired window still kept
that holds the pane. Early firings emit the windows of the panes updated
since the last early firing. Processing-time sliding windows, the RocksDB
backend and aggregations whose merge depends on arrival order
(``collect_list``, user aggregators) keep one row per (key, window).
"""

from __future__ import annotations

from math import ceil
from typing import Any

import polars as pl

from sluice.errors import JobError
from sluice.operators.aggregations import BoundAgg
from sluice.operators.base import Operator, OperatorContext
from sluice.operators.partials import PS, Panes, Partials
from sluice.runtime.messages import MAX_TIME, MIN_TIME, TIME
from sluice.state.backends import rocksdb_for
from sluice.state.rocks_tables import WKEY, RocksWindowStore
from sluice.state.rocksdb import RocksDBStateBackend
from sluice.state.snapshot import Deferred, Snapshot
from sluice.time.windows import Global, Session, Sliding, Trigger, Tumbling, WindowSpec

WS, WE, DIRTY, FIRED, SEQ = "__ws", "__we", "__dirty", "__fired", "__seq"
UPD, FW = "__upd", "__fw"  # pane: version of its last update; snapshot: fired watermark
_COMPACT_ROWS = 200_000
_COMPACT_FRAMES = 16


class WindowOperator(Operator):
    """Aggregates keyed (or non-keyed, ``keys=[]``) windows."""

    def __init__(
        self,
        name: str,
        keys: list[str],
        spec: WindowSpec,
        aggs: list[BoundAgg],
        allowed_lateness_ms: int = 0,
        trigger: Trigger | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.keys = keys
        self.spec = spec
        self.partials = Partials(aggs)
        self.lateness = allowed_lateness_ms
        self.trigger = trigger if not isinstance(spec, Global) else spec.trigger
        self.purge = isinstance(spec, Global) and spec.purge
        self.processing = spec.time == "processing"
        self.session = isinstance(spec, Session)
        self.group = [*keys, WS, WE]
        self.state: pl.DataFrame | None = None
        self.pending: list[pl.DataFrame] = []
        self.pending_rows = 0
        self.next_fire = MAX_TIME  # min end-1 over unfired windows (incl. pending)
        self.next_cleanup = MAX_TIME  # min end-1+L over all windows
        self._timer_at = MAX_TIME
        self._batch_no = 0
        #: The RocksDB table of the state, when the job's backend is rocksdb.
        self.store: RocksWindowStore | None = None
        self._backend: RocksDBStateBackend | None = None
        self._final: Snapshot | None = None
        #: :class:`~sluice.state.rocksdb.RocksDBOptions` for this operator (else the job's).
        self.rocksdb_options: Any = None
        #: Pane slicing of sliding windows (None: one state row per window).
        self.panes: Panes | None = None
        self.pgroup = [*keys, PS]
        self._fired = MIN_TIME  # panes: every window with end - 1 <= this has fired
        self._version = 0  # panes: batches added so far
        self._early_at = 0  # panes: version at the last early firing
        self._track = self.trigger is not None and bool(
            self.trigger.on_update or self.trigger.every_ms
        )

    def open(self, ctx: OperatorContext) -> None:
        super().open(ctx)
        backend = rocksdb_for(ctx.config, ctx.name, ctx.subtask, self.rocksdb_options)
        if backend is not None:
            self._backend = backend
            early = self.trigger is not None and bool(
                self.trigger.on_update or self.trigger.every_ms
            )
            self.store = RocksWindowStore(
                backend, self.keys, sessions=self.session, track_dirty=early
            )
        spec = self.spec
        if (
            isinstance(spec, Sliding)
            and not self.processing
            and self.store is None
            and self.partials.order_free
        ):
            self.panes = Panes(spec.size_ms, spec.slide_ms, spec.offset_ms)
        if self.trigger is not None and self.trigger.every_ms:
            self._schedule_periodic(ctx.now() + self.trigger.every_ms)

    # -- assignment ----------------------------------------------------------------
    def _assign(self, batch: pl.DataFrame) -> pl.DataFrame:
        t = pl.col(TIME)
        spec = self.spec
        if isinstance(spec, Tumbling):
            ws = t - (t - spec.offset_ms) % spec.size_ms
            return batch.with_columns(ws.alias(WS), (ws + spec.size_ms).alias(WE))
        if isinstance(spec, Sliding):
            last = t - (t - spec.offset_ms) % spec.slide_ms
            n = ceil(spec.size_ms / spec.slide_ms)
            parts = []
            for k in range(n):
                ws = last - k * spec.slide_ms
                part = batch.with_columns(ws.alias(WS), (ws + spec.size_ms).alias(WE))
                if k:
                    part = part.filter(pl.col(WS) > t - spec.size_ms)
                parts.append(part)
            return pl.concat(parts) if len(parts) > 1 else parts[0]
        if isinstance(spec, Session):
            gap = (
                pl.lit(spec.gap_ms, pl.Int64)
                if spec.gap_expr is None
                else spec.gap_expr.cast(pl.Int64)
            )
            return batch.with_columns(t.alias(WS), (t + gap).alias(WE))
        # global window
        return batch.with_columns(pl.lit(MIN_TIME).alias(WS), pl.lit(MAX_TIME).alias(WE))

    # -- data ------------------------------------------------------------------------
    def process_batch(self, batch: pl.DataFrame) -> None:
        if self.panes is not None:
            self._process_panes(batch, self.panes)
            return
        if self.processing:
            batch = batch.with_columns(pl.lit(self.ctx.now() if self.ctx else 0).alias(TIME))
        assigned = self._assign(batch)
        wm = self.watermark if not self.processing else MIN_TIME
        if wm > MIN_TIME and not isinstance(self.spec, Global):
            assigned = self._drop_late(batch, assigned, wm)
            if assigned.height == 0:
                return
        if self.session:
            part = self._sessions_from_rows(assigned)
        else:
            part = self.partials.from_rows(assigned, self.group)
        part = part.with_columns(pl.lit(True).alias(DIRTY), pl.lit(False).alias(FIRED))
        if self.store is not None:
            self._process_stored(part, wm)
            return
        self.pending.append(part)
        self.pending_rows += part.height
        mn = part.get_column(WE).min()
        if mn is not None and int(mn) - 1 < self.next_fire:  # type: ignore[arg-type]
            self.next_fire = int(mn) - 1  # type: ignore[arg-type]
        if self.next_fire <= wm:
            self._fire(wm)  # late-but-allowed updates re-fire at once
        if self.trigger is not None and self.trigger.on_update:
            self._early_fire()
        elif self.pending_rows > _COMPACT_ROWS or len(self.pending) >= _COMPACT_FRAMES:
            self._compact()  # keep firing cheap: merge many small partials early
        if self.processing:
            self._schedule_processing_fire()

    def _drop_late(self, batch: pl.DataFrame, assigned: pl.DataFrame, wm: int) -> pl.DataFrame:
        late = pl.col(WE) - 1 + self.lateness <= wm
        if self.session and assigned.select(late.any()).item():
            late = self._rescue_session_rows(assigned, late)
        mask = assigned.select(late.alias("l")).get_column("l")
        if not mask.any():
            return assigned
        if isinstance(self.spec, Sliding):
            # an element is late when all its windows are; its latest window is first
            n_el = batch.height
            el_late = mask.head(n_el)
            dropped_pairs = int(mask.sum()) - int(el_late.sum())
            if dropped_pairs:
                self.metrics.add("late_window_assignments_dropped", dropped_pairs)
        else:
            el_late = mask
        late_rows = batch.filter(el_late)
        if late_rows.height:
            self.metrics.late_dropped += late_rows.height
            self.output.emit_side("late", late_rows)
        return assigned.filter(~mask)

    def _rescue_session_rows(self, assigned: pl.DataFrame, late: pl.Expr) -> pl.Expr:
        """Judge lateness on the merged session, element by element as in Flink.

        A row whose own window ``[t, t + gap)`` is late still counts when, at its
        arrival, it touches a kept session, a non-late row that arrived before it
        in this batch, or a late row already rescued. This path only runs for
        late rows, so it may be sequential.
        """
        keys = self.keys
        rows = assigned.with_row_index("__r").with_columns(late.alias("__late"))
        cand = rows.filter(pl.col("__late"))
        if cand.height == 0:
            return late
        ckeys = cand.select(keys).unique() if keys else None

        def key_of(r: dict[str, object]) -> tuple[object, ...]:
            return tuple(r[k] for k in keys)

        sessions: dict[tuple[object, ...], list[tuple[int, int]]] = {}
        if self.store is not None:
            st = self.store.sessions_of(cand.select(keys).unique())
        else:
            self._compact()
            st = self.state
        if st is not None and st.height:
            st = st.join(ckeys, on=keys, how="semi") if ckeys is not None else st
            for r in st.select(*keys, WS, WE).iter_rows(named=True):
                sessions.setdefault(key_of(r), []).append((r[WS], r[WE]))
        early = rows.filter(~pl.col("__late"))
        if ckeys is not None:
            early = early.join(ckeys, on=keys, how="semi")
        pending: dict[tuple[object, ...], list[tuple[int, int, int]]] = {}
        for r in early.select("__r", *keys, WS, WE).iter_rows(named=True):
            pending.setdefault(key_of(r), []).append((r["__r"], r[WS], r[WE]))
        rescued: list[int] = []
        for r in cand.select("__r", *keys, WS, WE).iter_rows(named=True):
            k = key_of(r)
            ivs = sessions.setdefault(k, [])
            before = pending.get(k)
            while before and before[0][0] < r["__r"]:
                _, a, b = before.pop(0)
                ivs.append((a, b))
            ws, we = r[WS], r[WE]
            if any(a <= we and b >= ws for a, b in ivs):
                rescued.append(r["__r"])
                ivs.append((ws, we))
        if not rescued:
            return late
        return late & ~pl.int_range(pl.len()).is_in(pl.Series(rescued, dtype=pl.UInt32).implode())

    def _sessions_from_rows(self, rows: pl.DataFrame) -> pl.DataFrame:
        # sessionize in time order, aggregate in arrival order (collect_list,
        # ties of first/last). Rows usually arrive in time order: then a stable
        # sort by key alone gives time order per key that is also arrival order.
        if rows.get_column(WS).is_sorted():
            if self.keys:
                rows = rows.sort(self.keys, maintain_order=True)
            rows = _with_session_ids(rows, self.keys)
        else:
            rows = rows.with_row_index("__arr").sort([*self.keys, WS])
            rows = _with_session_ids(rows, self.keys).sort("__arr").drop("__arr")
        self._batch_no += 1
        parts = self.partials.from_rows(
            rows,
            [*self.keys, "__sid"],
            [pl.col(WS).min(), pl.col(WE).max(), pl.lit(self._batch_no, pl.Int64).alias(SEQ)],
        )
        return parts.drop("__sid")

    # -- state maintenance -------------------------------------------------------------
    def _compact(self) -> None:
        if not self.pending:
            return
        frames = ([self.state] if self.state is not None else []) + self.pending
        self.pending = []
        self.pending_rows = 0
        allp = pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else frames[0]
        self.state = self._merge(allp)

    def _merge(self, allp: pl.DataFrame) -> pl.DataFrame:
        """Merge partials of the same window (sessions: of touching windows)."""
        if self.panes is not None:
            return self.partials.merge(
                allp, self.pgroup, [pl.col(UPD).max()] if self._track else []
            )
        flags = [pl.col(DIRTY).any(), pl.col(FIRED).all()]
        if self.session:
            allp = _with_session_ids(allp.sort([*self.keys, WS]), self.keys).sort(
                SEQ, maintain_order=True
            )
            merged = self.partials.merge(
                allp,
                [*self.keys, "__sid"],
                [pl.col(WS).min(), pl.col(WE).max(), pl.col(SEQ).min(), *flags],
            ).drop("__sid")
        else:
            merged = self.partials.merge(allp, self.group, flags)
        return merged

    def _recompute_bounds(self) -> None:
        if self.panes is not None:
            self._recompute_pane_bounds(self.panes)
            return
        if self.store is not None:
            self._recompute_stored_bounds()
            return
        st = self.state
        if st is None or st.height == 0:
            self.next_fire = MAX_TIME
            self.next_cleanup = MAX_TIME
            return
        unf = st.filter(~pl.col(FIRED) | pl.col(DIRTY)).get_column(WE).min()
        self.next_fire = int(unf) - 1 if unf is not None else MAX_TIME  # type: ignore[arg-type]
        mn = st.get_column(WE).min()
        self.next_cleanup = min(int(mn) - 1 + self.lateness, MAX_TIME)  # type: ignore[arg-type]

    def _fire(self, wm: int) -> None:
        if self.panes is not None:
            self._fire_panes(wm, self.panes)
            return
        if self.store is not None:
            self._fire_stored(wm)
            return
        self._compact()
        st = self.state
        if st is None or st.height == 0:
            self._recompute_bounds()
            return
        due_mask = (pl.col(WE) - 1 <= wm) & (pl.col(DIRTY) | ~pl.col(FIRED))
        due = st.filter(due_mask)
        if due.height:
            self._emit_results(due)
            st = st.with_columns(
                pl.when(due_mask).then(False).otherwise(pl.col(DIRTY)).alias(DIRTY),
                pl.when(due_mask).then(True).otherwise(pl.col(FIRED)).alias(FIRED),
            )
        if wm == MAX_TIME:
            st = st.clear()
        else:
            keep = pl.col(WE) - 1 + self.lateness > wm
            st = st.filter(keep)
        self.state = st
        self._recompute_bounds()

    def _early_fire(self) -> None:
        if self.panes is not None:
            self._early_fire_panes(self.panes)
            return
        if self.store is not None:
            self._early_fire_stored()
            return
        self._compact()
        st = self.state
        if st is None:
            return
        dirty = st.filter(pl.col(DIRTY))
        if dirty.height:
            self._emit_results(dirty)
            if self.purge:
                self.state = st.filter(~pl.col(DIRTY))
            else:
                self.state = st.with_columns(pl.lit(False).alias(DIRTY))

    def _emit_results(self, windows: pl.DataFrame) -> None:
        res = self.partials.results(windows)
        is_global = isinstance(self.spec, Global)
        ws = pl.lit(None, pl.Datetime("ms")) if is_global else pl.col(WS).cast(pl.Datetime("ms"))
        we = pl.lit(None, pl.Datetime("ms")) if is_global else pl.col(WE).cast(pl.Datetime("ms"))
        tcol = (
            pl.lit(self.watermark if is_global else None, pl.Int64) if is_global else pl.col(WE) - 1
        )
        out = res.select(
            *self.keys,
            ws.alias("window_start"),
            we.alias("window_end"),
            *self.partials.out_names,
            tcol.alias(TIME),
        )
        self.emit(out)

    # -- sliding windows by panes ----------------------------------------------------------
    def _process_panes(self, batch: pl.DataFrame, p: Panes) -> None:
        wm = self.watermark
        rows = batch.with_columns(p.pane_start(pl.col(TIME)).alias(PS))
        if wm > MIN_TIME:
            tmin = batch.get_column(TIME).min()
            # a row can only be late for a window when t <= wm - lateness
            if tmin is not None and int(tmin) <= wm - self.lateness:  # type: ignore[arg-type]
                rows = self._drop_late_panes(batch, rows, wm, p)
                if rows.height == 0:
                    return
        part = self.partials.from_rows(rows, self.pgroup)
        self._version += 1
        if self._track:
            part = part.with_columns(pl.lit(self._version, pl.Int64).alias(UPD))
        self.pending.append(part)
        self.pending_rows += part.height
        nf, cl = part.select(
            p.first_end_after(pl.col(PS), self._fired).min().alias("f"),
            p.cleanup(pl.col(PS), self.lateness).min().alias("c"),
        ).row(0)
        if nf is not None and nf < self.next_fire:
            self.next_fire = nf
        if cl is not None and cl < self.next_cleanup:
            self.next_cleanup = cl
        fired = self._fired
        if fired > MIN_TIME and (self.lateness or fired > wm):
            # late-but-allowed rows: re-fire the kept, fired windows of their panes
            kept_after = wm - self.lateness if wm > MIN_TIME else MIN_TIME
            touched = part.filter(pl.col(PS) + (p.pane - 1) <= fired)
            if touched.height:
                targets = p.windows_of(touched, kept_after, fired).select(*self.keys, WS)
                if targets.height:
                    self._emit_windows(targets.unique(), kept_after, fired, p)
        if self.trigger is not None and self.trigger.on_update:
            self._early_fire()
        elif self.pending_rows > _COMPACT_ROWS or len(self.pending) >= _COMPACT_FRAMES:
            self._compact()

    def _drop_late_panes(
        self, batch: pl.DataFrame, rows: pl.DataFrame, wm: int, p: Panes
    ) -> pl.DataFrame:
        late, n = p.late_pairs(pl.col(TIME), wm, self.lateness)
        m = batch.select(late.alias("l"), n.alias("n"))
        el_late = m.get_column("l")
        dropped_pairs = int(m.get_column("n").filter(~el_late).sum())
        if dropped_pairs:
            self.metrics.add("late_window_assignments_dropped", dropped_pairs)
        if not el_late.any():
            return rows
        late_rows = batch.filter(el_late)
        self.metrics.late_dropped += late_rows.height
        self.output.emit_side("late", late_rows)
        return rows.filter(~el_late)

    def _emit_windows(self, targets: pl.DataFrame, after: int, upto: int, p: Panes) -> None:
        """Emit the windows ``targets`` (keys, ``__ws``), all ending in ``(after, upto]``."""
        self._compact()
        st = self.state
        if st is None or st.height == 0:
            return
        st = st.filter((pl.col(PS) + (p.pane - 1) <= upto) & (pl.col(PS) + (p.size - 1) > after))
        if self.keys:
            st = st.join(targets.select(self.keys).unique(), on=self.keys, how="semi")
        wins = p.windows_lazy(st.lazy(), after, upto).join(
            targets.lazy(), on=[*self.keys, WS], how="semi"
        )
        res = self.partials.merge(wins, self.group)
        if res.height:
            self._emit_results(res)

    def _fire_panes(self, wm: int, p: Panes) -> None:
        # one query from the unmerged partials (state, then batches in arrival
        # order) to the windows: merging a pane's partials and its windows'
        # panes is one group_by; compaction then only keeps the panes still needed
        frames = ([self.state] if self.state is not None else []) + self.pending
        self.pending, self.pending_rows = [], 0
        allp = pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else None
        allp = frames[0] if allp is None and frames else allp
        after = self._fired
        if allp is not None and allp.height and wm > after:
            ps = pl.col(PS)
            due = allp.lazy().filter((ps + (p.pane - 1) <= wm) & (ps + (p.size - 1) > after))
            wins = self.partials.merge(p.windows_lazy(due, after, wm), self.group)
            if wins.height:
                self._emit_results(wins)
        self._fired = max(after, wm)
        if allp is not None:
            if wm == MAX_TIME:
                self.state = allp.clear()
            else:
                keep = allp.filter(p.cleanup(pl.col(PS), self.lateness) > wm)
                self.state = self._merge(keep) if len(frames) > 1 else keep
        self._recompute_bounds()

    def _early_fire_panes(self, p: Panes) -> None:
        self._compact()
        st = self.state
        since, self._early_at = self._early_at, self._version
        if st is None or st.height == 0:
            return
        dirty = st.filter(pl.col(UPD) > since)
        if dirty.height == 0:
            return
        targets = p.windows_of(dirty, self._fired).select(*self.keys, WS)
        if targets.height:
            self._emit_windows(targets.unique(), self._fired, MAX_TIME, p)

    def _recompute_pane_bounds(self, p: Panes) -> None:
        st = self.state
        if st is None or st.height == 0:
            self.next_fire = self.next_cleanup = MAX_TIME
            return
        nf, cl = st.select(
            p.first_end_after(pl.col(PS), self._fired).min().alias("f"),
            p.cleanup(pl.col(PS), self.lateness).min().alias("c"),
        ).row(0)
        self.next_fire = MAX_TIME if nf is None else nf
        self.next_cleanup = MAX_TIME if cl is None else cl

    def _pane_snapshot(self, st: pl.DataFrame) -> pl.DataFrame:
        """Pane rows plus what is not in them: the fired watermark, and (early
        triggers) whether the pane changed since the last early firing."""
        st = st.with_columns(pl.lit(self._fired, pl.Int64).alias(FW))
        if self._track:
            st = st.with_columns((pl.col(UPD) > self._early_at).alias(DIRTY)).drop(UPD)
        return st

    def _restore_panes(self, panes: pl.DataFrame) -> bool:
        """Go on from a pane snapshot; False when this instance cannot (no pane
        slicing here, or old subtasks that had fired up to different watermarks)."""
        fws = panes.get_column(FW).unique()
        if self.panes is None or fws.len() != 1:
            return False
        self._fired = int(fws[0])
        st = panes.drop(FW)
        dirty = pl.col(DIRTY) if DIRTY in st.columns else pl.lit(True)
        if self._track:
            st = st.with_columns(dirty.cast(pl.Int64).alias(UPD))
            self._version, self._early_at = 1, 0
        self.state = st.drop(DIRTY, strict=False)
        self.pending = []
        self.pending_rows = 0
        self._recompute_bounds()
        return True

    def _windows_from_panes(self, panes: pl.DataFrame) -> pl.DataFrame:
        """The one-row-per-window table of a pane snapshot (flags as the window
        path keeps them): for a restore on the RocksDB backend, for instance."""
        spec = self.spec
        if not isinstance(spec, Sliding):
            raise JobError(
                f"window operator {self.name!r}: the checkpoint holds sliding-window panes "
                f"but the job now has a {type(spec).__name__} window; restore it with the "
                "window it was written with"
            )
        p = Panes(spec.size_ms, spec.slide_ms, spec.offset_ms)
        dirty = pl.col(DIRTY) if DIRTY in panes.columns else pl.lit(True)
        wins = p.windows_of(panes.with_columns(dirty.alias("__pd"))).filter(
            pl.col(WE) - 1 + self.lateness > pl.col(FW)
        )
        fired = (pl.col(WE) - 1 <= pl.col(FW)).all().alias(FIRED)
        merged = self.partials.merge(wins, self.group, [fired, pl.col("__pd").any().alias(DIRTY)])
        merged = merged.with_columns((pl.col(DIRTY) & ~pl.col(FIRED)).alias(DIRTY))
        return merged.select(*self.group, *self.partials.cols, DIRTY, FIRED)

    # -- state in RocksDB -----------------------------------------------------------------
    def _process_stored(self, part: pl.DataFrame, wm: int) -> None:
        """Merge a batch's partials with the stored rows of the windows it touches."""
        store = self.store
        assert store is not None
        if self.session:
            stored = store.sessions_of(part.select(self.keys).unique() if self.keys else part)
        else:
            stored = store.get(part)
        if stored is not None and stored.height:
            if self.session:
                store.delete(stored)  # merged sessions may have other bounds
            stored = stored.drop(WKEY)
            allp = pl.concat([stored, part.select(stored.columns)], how="vertical_relaxed")
            merged = self._merge(allp)
        else:
            merged = part
        if store.codec.schema is not None:
            merged = merged.select(store.codec.schema.names())
        store.put(merged)
        mn = merged.get_column(WE).min()
        if mn is not None and int(mn) - 1 < self.next_fire:  # type: ignore[arg-type]
            self.next_fire = int(mn) - 1  # type: ignore[arg-type]
        if mn is not None:
            self.next_cleanup = min(self.next_cleanup, int(mn) - 1 + self.lateness)  # type: ignore[arg-type]
        if self.next_fire <= wm:
            self._fire(wm)
        if self.trigger is not None and self.trigger.on_update:
            self._early_fire()
        if self.processing:
            self._schedule_processing_fire()

    def _recompute_stored_bounds(self) -> None:
        store = self.store
        assert store is not None
        first = store.first_end()
        if first is None:
            self.next_fire = self.next_cleanup = MAX_TIME
            return
        self.next_cleanup = min(first - 1 + self.lateness, MAX_TIME)
        # every window ending after the watermark is unfired (firing is final)
        wm = self.watermark if not self.processing else self._fired_upto
        nxt = store.first_end(after=wm + 1) if wm < MAX_TIME - 1 else None
        self.next_fire = MAX_TIME if nxt is None else nxt - 1

    _fired_upto = MIN_TIME

    def _fire_stored(self, wm: int) -> None:
        store = self.store
        assert store is not None
        self._fired_upto = max(self._fired_upto, wm)
        upto = None if wm >= MAX_TIME - 1 else wm + 1
        due_mask = pl.col(DIRTY) | ~pl.col(FIRED)
        for chunk in store.scan(upto):
            due = chunk.filter(due_mask)
            if due.height:
                self._emit_results(due)
            if wm == MAX_TIME:
                store.delete(chunk)
                continue
            gone = pl.col(WE) - 1 + self.lateness <= wm
            store.delete(chunk.filter(gone))
            kept = due.filter(~gone)
            if kept.height:
                store.put(kept.with_columns(pl.lit(False).alias(DIRTY), pl.lit(True).alias(FIRED)))
        self._recompute_stored_bounds()

    def _early_fire_stored(self) -> None:
        store = self.store
        assert store is not None
        for dirty in store.dirty():
            self._emit_results(dirty)
            if self.purge:
                store.delete(dirty)
            else:
                store.put(dirty.with_columns(pl.lit(False).alias(DIRTY)))
        self._recompute_stored_bounds()

    def _stored_snapshot(self, snap: Snapshot, checkpoint_id: int | None) -> Snapshot:
        store = self.store
        assert store is not None and self._backend is not None
        if checkpoint_id is None or not self.keys or store.codec.schema is None:
            st = store.table()
            if st is not None and st.height:
                (snap.keyed if self.keys else snap.tables)["windows"] = st
            return snap
        # asynchronous: a RocksDB checkpoint now, scanned on the writer thread
        copy = self._backend.checkpoint_copy(checkpoint_id)
        reader = RocksWindowStore(copy, self.keys, sessions=self.session)
        reader.codec.schema = store.codec.schema

        def build() -> dict[str, pl.DataFrame]:
            st = reader.table()
            return {"windows": st} if st is not None else {}

        snap.deferred.append(Deferred(build, copy.close))
        return snap

    # -- time ----------------------------------------------------------------------------
    def on_watermark(self, time: int) -> None:
        if self.processing:
            if time == MAX_TIME:
                self._fire(MAX_TIME)
            return
        if self.next_fire <= time or self.next_cleanup <= time:
            self._fire(time)
        if self.panes is not None:
            self._fired = max(self._fired, time)  # nothing else ended by now

    def _schedule_processing_fire(self) -> None:
        if self.next_fire < self._timer_at and self.ctx is not None:
            self._timer_at = self.next_fire
            at = self.next_fire

            def cb(now: int, at: int = at) -> None:
                if self._timer_at == at:
                    self._timer_at = MAX_TIME
                self._fire(now)
                self._schedule_processing_fire()

            self.ctx.timers.register(at, cb)

    def _schedule_periodic(self, at: int) -> None:
        assert self.ctx is not None and self.trigger is not None and self.trigger.every_ms
        every = self.trigger.every_ms

        def cb(now: int) -> None:
            if self._ended:
                return
            self._early_fire()
            self._schedule_periodic(now + every)

        self.ctx.timers.register(at, cb)

    _ended = False

    def snapshot_state(self) -> Snapshot:
        return self._snapshot(None)

    def checkpoint_snapshot(self, checkpoint_id: int) -> Snapshot:
        return self._snapshot(checkpoint_id)

    def _snapshot(self, checkpoint_id: int | None) -> Snapshot:
        if self._final is not None:
            return self._final
        if self.store is not None:
            return self._stored_snapshot(
                Snapshot(keys=self.keys, watermark=self.watermark), checkpoint_id
            )
        self._compact()
        snap = Snapshot(keys=self.keys, watermark=self.watermark)
        if self.state is not None and self.state.height:
            name, st = "windows", self.state
            if self.panes is not None:
                name, st = "panes", self._pane_snapshot(st)
            (snap.keyed if self.keys else snap.tables)[name] = st
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        panes = snapshot.keyed.get("panes", snapshot.tables.get("panes"))
        if panes is not None and panes.height and self._restore_panes(panes):
            return
        st = snapshot.keyed.get("windows", snapshot.tables.get("windows"))
        if panes is not None and panes.height:
            st = self._windows_from_panes(panes)
        if st is not None and st.height:
            self.panes = None  # this instance goes on with one row per window
        if st is not None and st.height and self.store is not None:
            self.store.restore(st)
            self._recompute_bounds()
            if self.processing:
                self._schedule_processing_fire()
        elif st is not None and st.height:
            self.state = st
            self.pending = []
            self.pending_rows = 0
            self._recompute_bounds()
            if self.processing:
                self._schedule_processing_fire()

    def on_end(self) -> None:
        self._ended = True
        self._fire(MAX_TIME)

    def close(self) -> None:
        if self._backend is None:
            return
        if self.finished and self.ctx is not None and self.ctx.checkpoints is not None:
            self._final = self.snapshot_state()  # still part of later checkpoints
        self._backend.close()
        self._backend = None
        self.store = None


def _with_session_ids(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """``df`` (sorted by keys and start) with ``__sid``, a session number: a new
    session starts when the start is after every earlier end of its key
    (windows that touch merge, as in Flink). Ids are unique over the table.

    The running maximum of ends per key is one global ``cum_max`` over ends
    shifted by ``key rank * span``, so that every key's values lie above the
    previous keys' (a per-key ``over`` is several times slower with many keys).
    """
    n = df.height
    if not keys or n == 0:
        return df.with_columns(_session_ids(keys))
    lo, hi = df.get_column(WE).min(), df.get_column(WE).max()
    span = int(hi) - int(lo) + 1  # type: ignore[arg-type]
    if span <= 0 or n * span >= 2**62:  # would overflow: the per-key expression
        return df.with_columns(_session_ids(keys))
    first = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys])
    first = first.fill_null(True)
    base = first.cast(pl.Int64).cum_sum() * span - int(lo)  # type: ignore[arg-type]
    prev_end = (pl.col(WE) + base).cum_max().shift(1)
    new = first | (pl.col(WS) + base > prev_end)
    return df.with_columns(new.cast(pl.Int64).cum_sum().alias("__sid"))


def _session_ids(keys: list[str]) -> pl.Expr:
    """Per-key session numbers (see :func:`_with_session_ids`), as an expression."""
    prev_end = pl.col(WE).cum_max().shift(1)
    new = pl.col(WS) > prev_end
    if keys:
        prev_end = prev_end.over(keys)
        new = (pl.col(WS) > prev_end).fill_null(True)
        return new.cast(pl.Int64).cum_sum().over(keys).alias("__sid")
    return new.fill_null(True).cast(pl.Int64).cum_sum().alias("__sid")
