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
``gcd(size, slide)``, one state row per (key, pane): that path lives in
:mod:`sluice.operators.window_panes`. Processing-time sliding windows, the
RocksDB backend and aggregations whose merge depends on arrival order
(``collect_list``, user aggregators) keep one row per (key, window). Session
numbering and late-row rescue live in :mod:`sluice.operators.sessions`.
"""

from __future__ import annotations

from math import ceil

import polars as pl

from sluice.operators import window_panes
from sluice.operators.aggregations import BoundAgg
from sluice.operators.base import OperatorContext
from sluice.operators.partials import PS, Panes, Partials
from sluice.operators.sessions import rescue_late_rows, session_partials, with_session_ids
from sluice.operators.stored import StoreBackedOperator
from sluice.operators.window_columns import DIRTY, FIRED, SEQ, UPD, WE, WS
from sluice.runtime.messages import MAX_TIME, MIN_TIME, TIME
from sluice.state.rocks_tables import WKEY, RocksWindowStore
from sluice.state.rocksdb import RocksDBStateBackend
from sluice.state.snapshot import Deferred, Snapshot
from sluice.time.windows import Global, Session, Sliding, Trigger, Tumbling, WindowSpec

_COMPACT_ROWS = 200_000
_COMPACT_FRAMES = 16


class WindowOperator(StoreBackedOperator):
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
        #: Pane slicing of sliding windows (None: one state row per window).
        self.panes: Panes | None = None
        self.pgroup = [*keys, PS]
        self._fired = MIN_TIME  # panes: every window with end - 1 <= this has fired
        self._version = 0  # panes: batches added so far
        self._early_at = 0  # panes: version at the last early firing
        self._track = self.trigger is not None and bool(
            self.trigger.on_update or self.trigger.every_ms
        )

    def _open_store(self, backend: RocksDBStateBackend) -> RocksWindowStore:
        return RocksWindowStore(backend, self.keys, sessions=self.session, track_dirty=self._track)

    def open(self, ctx: OperatorContext) -> None:
        super().open(ctx)
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
            window_panes.process(self, batch, self.panes)
            return
        if self.processing:
            batch = batch.with_columns(pl.lit(self.ctx.now() if self.ctx else 0).alias(TIME))
        wm = self.watermark if not self.processing else MIN_TIME
        if isinstance(self.spec, Tumbling) and not self._maybe_late(batch, wm):
            part = self._tumbling_partials(batch)
        else:
            assigned = self._assign(self._narrow(batch))
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
        self._early_fire_or_compact()
        if self.processing:
            self._schedule_processing_fire()

    def _early_fire_or_compact(self) -> None:
        if self.trigger is not None and self.trigger.on_update:
            self._early_fire()
        elif self.pending_rows > _COMPACT_ROWS or len(self.pending) >= _COMPACT_FRAMES:
            self._compact()  # keep firing cheap: merge many small partials early

    def _narrow(self, batch: pl.DataFrame) -> pl.DataFrame:
        """``batch`` without the columns no aggregation reads, so that sorting
        (sessions) or copying (sliding windows) does not move them."""
        need = self.partials.inputs
        spec = self.spec
        if need is None or (isinstance(spec, Session) and spec.gap_expr is not None):
            return batch
        cols = [c for c in batch.columns if c in (*self.keys, TIME, *need)]
        return batch.select(cols) if len(cols) < batch.width else batch

    def _maybe_late(self, batch: pl.DataFrame, wm: int) -> bool:
        """Whether a row of ``batch`` may be late for a tumbling window: its
        earliest row's window is past cleanup (window ends grow with time)."""
        if wm == MIN_TIME:
            return False
        spec = self.spec
        assert isinstance(spec, Tumbling)
        first = batch.get_column(TIME).min()
        if first is None:
            return False
        t = int(first)  # type: ignore[arg-type]
        end = t - (t - spec.offset_ms) % spec.size_ms + spec.size_ms
        return end - 1 + self.lateness <= wm

    def _tumbling_partials(self, batch: pl.DataFrame) -> pl.DataFrame:
        """A batch's partials per (key, tumbling window), none of its rows late:
        grouped by the window start alone (the end follows from it), which
        Polars aggregates by slices when the batch is in time order and unkeyed."""
        spec = self.spec
        assert isinstance(spec, Tumbling)
        t = pl.col(TIME)
        ws = t - (t - spec.offset_ms) % spec.size_ms
        if not self.keys and batch.get_column(TIME).is_sorted():
            ws = ws.set_sorted()
        part = self.partials.from_rows(batch.with_columns(ws.alias(WS)), [*self.keys, WS])
        part = part.with_columns((pl.col(WS) + spec.size_ms).alias(WE))
        return part.select(*self.group, pl.exclude(self.group))

    def _drop_late(self, batch: pl.DataFrame, assigned: pl.DataFrame, wm: int) -> pl.DataFrame:
        first_end = assigned.get_column(WE).min()
        if first_end is None or int(first_end) - 1 + self.lateness > wm:  # type: ignore[arg-type]
            return assigned  # no window of the batch is past cleanup
        late = pl.col(WE) - 1 + self.lateness <= wm
        if self.session and assigned.select(late.any()).item():
            late = rescue_late_rows(assigned, late, self.keys, self._kept_sessions)
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

    def _kept_sessions(self, keys: pl.DataFrame) -> pl.DataFrame | None:
        """The kept sessions of ``keys`` (for judging late session rows)."""
        if self.store is not None:
            return self.store.sessions_of(keys)
        self._compact()
        return self.state

    def _sessions_from_rows(self, rows: pl.DataFrame) -> pl.DataFrame:
        self._batch_no += 1
        return session_partials(rows, self.keys, self.partials, self._batch_no)

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
            allp = with_session_ids(allp.sort([*self.keys, WS]), self.keys)
            if not self.partials.order_free:  # merge in arrival order
                allp = allp.sort(SEQ, maintain_order=True)
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
            window_panes.recompute_bounds(self, self.panes)
            return
        if self.store is not None:
            self._recompute_stored_bounds()
            return
        st = self.state
        if st is None or st.height == 0:
            self.next_fire = MAX_TIME
            self.next_cleanup = MAX_TIME
            return
        mn = st.get_column(WE).min()
        self.next_cleanup = min(int(mn) - 1 + self.lateness, MAX_TIME)  # type: ignore[arg-type]
        if not self.lateness:  # no fired window is kept: every one is still to fire
            self.next_fire = int(mn) - 1  # type: ignore[arg-type]
            return
        unf = st.filter(~pl.col(FIRED) | pl.col(DIRTY)).get_column(WE).min()
        self.next_fire = int(unf) - 1 if unf is not None else MAX_TIME  # type: ignore[arg-type]

    def _fire(self, wm: int) -> None:
        if self.panes is not None:
            window_panes.fire(self, wm, self.panes)
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
            if self.lateness and wm != MAX_TIME:  # fired windows are kept a while
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
            window_panes.early_fire(self, self.panes)
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

    def _snapshot(self, checkpoint_id: int | None) -> Snapshot:
        if self.store is not None:
            return self._stored_snapshot(
                Snapshot(keys=self.keys, watermark=self.watermark), checkpoint_id
            )
        self._compact()
        snap = Snapshot(keys=self.keys, watermark=self.watermark)
        if self.state is not None and self.state.height:
            name, st = "windows", self.state
            if self.panes is not None:
                name, st = "panes", window_panes.snapshot(self, st)
            (snap.keyed if self.keys else snap.tables)[name] = st
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        panes = snapshot.keyed.get("panes", snapshot.tables.get("panes"))
        if panes is not None and panes.height and window_panes.restore(self, panes):
            return
        st = snapshot.keyed.get("windows", snapshot.tables.get("windows"))
        if panes is not None and panes.height:
            st = window_panes.windows_from_panes(self, panes)
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
