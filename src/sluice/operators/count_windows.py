"""Count windows (tumbling and sliding) and global windows with a count trigger.

Rows of a key are numbered in arrival order and grouped into panes of
``gcd(size, slide)`` rows; a window is a run of panes, so every row is
aggregated once and windows are merged from pane partials (vectorized).
Sliding count windows follow Flink's ``countWindow(size, slide)``: fire every
``slide`` rows over the last ``size`` rows (fewer at the start). Incomplete
count windows do not fire at end of input (as in Flink).

With the RocksDB state backend (``sl.Flow(state_backend="rocksdb")``) the
per-key state (row counts and open panes) lives in RocksDB
(:class:`sluice.state.rocks_tables.RocksCountStore`, one entry per key): a
batch fetches its keys' state with one multi-get, runs the same Polars code as
the memory path on it, and writes it back with one write batch, so memory does
not grow with the number of keys. Snapshots are the same tables on both
backends (either restores the other), built off the job's thread from a
RocksDB checkpoint.
"""

from __future__ import annotations

import polars as pl

from sluice.operators.aggregations import BoundAgg
from sluice.operators.partials import Partials
from sluice.operators.stored import StoreBackedOperator
from sluice.runtime.messages import TIME
from sluice.state.rocks_tables import RocksCountStore
from sluice.state.rocksdb import RocksDBStateBackend
from sluice.state.snapshot import Deferred, Snapshot
from sluice.time.windows import Count, Global, WindowSpec

PANE, N, TMAX, FIRE = "__pane", "__n", "__tmax", "__fire"


class CountWindowOperator(StoreBackedOperator):
    def __init__(self, name: str, keys: list[str], spec: WindowSpec, aggs: list[BoundAgg]) -> None:
        super().__init__()
        self.name = name
        self.keys = keys
        self.partials = Partials(aggs)
        if isinstance(spec, Count):
            self.size: int | None = spec.size
            self.slide = spec.slide
            self.pane = spec.pane
            self.purge_all = False
        else:
            assert isinstance(spec, Global) and spec.trigger and spec.trigger.count
            n = spec.trigger.count
            # purge: tumbling count windows; otherwise every n rows over all rows so far
            self.size = n if spec.purge else None
            self.slide = n
            self.pane = n
            self.purge_all = False
        self.is_global = isinstance(spec, Global)
        self.panes: pl.DataFrame | None = None
        self.counts: pl.DataFrame | None = None
        self._by = keys or ["__all"]
        self.store: RocksCountStore | None = None

    def _open_store(self, backend: RocksDBStateBackend) -> RocksCountStore:
        return RocksCountStore(backend, self._by)

    def process_batch(self, batch: pl.DataFrame) -> None:
        if not self.keys:
            batch = batch.with_columns(pl.lit(0).alias("__all"))
        store = self.store
        if store is None:
            self._process(batch)
            return
        # the state of this batch's keys only: fetched, updated as in memory, written back
        self.panes, self.counts = store.get(batch.select(self._by).unique())
        try:
            self._process(batch)
            assert self.counts is not None
            store.put(self.panes, self.counts)
        finally:
            self.panes = self.counts = None

    def _process(self, batch: pl.DataFrame) -> None:
        by = self._by
        if TIME not in batch.columns:
            assert self.ctx is not None
            batch = batch.with_columns(pl.lit(self.ctx.now(), pl.Int64).alias(TIME))
        idx = pl.int_range(pl.len()).over(by)
        if self.counts is not None and self.counts.height:
            batch = batch.join(self.counts, on=by, how="left", maintain_order="left").with_columns(
                pl.col("__base").fill_null(0)
            )
        else:
            batch = batch.with_columns(pl.lit(0, pl.Int64).alias("__base"))
        batch = batch.with_columns((idx + pl.col("__base")).alias("__idx"))
        batch = batch.with_columns((pl.col("__idx") // self.pane).alias(PANE))
        part = self.partials.from_rows(
            batch, [*by, PANE], [pl.len().cast(pl.Int64).alias(N), pl.col(TIME).max().alias(TMAX)]
        )
        counts = batch.group_by(by).agg(
            pl.col("__base").first().alias("__old"), (pl.col("__idx").max() + 1).alias("__base")
        )
        frames = [self.panes, part] if self.panes is not None else [part]
        allp = pl.concat(frames, how="vertical_relaxed")
        self.panes = self.partials.merge(allp, [*by, PANE], [pl.col(N).sum(), pl.col(TMAX).max()])
        # firing points: multiples of slide in (old, new]
        s = self.slide
        fires = (
            counts.with_columns(
                ((pl.col("__old") // s + 1) * s).alias("__f0"),
                (pl.col("__base") // s * s).alias("__f1"),
            )
            .filter(pl.col("__f1") >= pl.col("__f0"))
            .with_columns(pl.int_ranges(pl.col("__f0"), pl.col("__f1") + 1, s).alias(FIRE))
            .select(*by, FIRE)
            .explode(FIRE)
        )
        old_counts = self.counts
        new_counts = counts.select(*by, "__base")
        if old_counts is not None and old_counts.height:
            self.counts = pl.concat([old_counts.join(new_counts, on=by, how="anti"), new_counts])
        else:
            self.counts = new_counts
        if fires.height:
            self._fire(fires)

    def _fire(self, fires: pl.DataFrame) -> None:
        by = self._by
        assert self.panes is not None
        lo = (
            (pl.col(FIRE) - self.size).clip(lower_bound=0) // self.pane
            if self.size is not None
            else pl.lit(-1)  # the folded running pane of a global window
        )
        hi = pl.col(FIRE) // self.pane
        j = (
            fires.join(self.panes, on=by, how="inner")
            .filter((pl.col(PANE) >= lo) & (pl.col(PANE) < hi))
            .sort([*by, FIRE, PANE])  # merge panes in arrival order (collect_list)
        )
        merged = self.partials.merge(
            j.drop(PANE), [*by, FIRE], [pl.col(N).sum(), pl.col(TMAX).max()]
        ).sort([*by, FIRE])
        res = self.partials.results(merged)
        win = (
            [pl.lit(None, pl.Datetime("ms")).alias(c) for c in ("window_start", "window_end")]
            if self.is_global
            else []
        )
        out = res.select(*self.keys, *win, *self.partials.out_names, pl.col(TMAX).alias(TIME))
        self.emit(out)
        # drop panes no future window needs
        last = fires.group_by(by).agg(pl.col(FIRE).max().alias("__last"))
        if self.size is not None:
            need_from = (pl.col("__last") + self.slide - self.size).clip(lower_bound=0) // self.pane
            keep = self.panes.join(last, on=by, how="left").filter(
                pl.col("__last").is_null() | (pl.col(PANE) >= need_from)
            )
            self.panes = keep.drop("__last")
        else:
            # global window without purge: fold fired panes into one running pane (-1)
            p = (
                self.panes.join(last, on=by, how="left")
                .sort([*by, PANE])  # fold in arrival order (collect_list)
                .with_columns(
                    pl.when(
                        pl.col("__last").is_not_null()
                        & (pl.col(PANE) < pl.col("__last") // self.pane)
                    )
                    .then(pl.lit(-1, pl.Int64))
                    .otherwise(pl.col(PANE))
                    .alias(PANE)
                )
                .drop("__last")
            )
            self.panes = self.partials.merge(p, [*by, PANE], [pl.col(N).sum(), pl.col(TMAX).max()])

    def _snapshot(self, checkpoint_id: int | None) -> Snapshot:
        snap = Snapshot(keys=self._by, watermark=self.watermark)
        store = self.store
        if store is not None and self._backend is not None:
            if checkpoint_id is None or store.key_schema is None:
                snap.keyed.update(store.tables())
                return snap
            # asynchronous: a RocksDB checkpoint now, scanned on the writer thread
            copy = self._backend.checkpoint_copy(checkpoint_id)
            reader = RocksCountStore(copy, self._by)
            reader.key_schema, reader.pane_schema = store.key_schema, store.pane_schema
            snap.deferred.append(Deferred(reader.tables, copy.close))
            return snap
        if self.panes is not None and self.panes.height:
            snap.keyed["panes"] = self.panes
        if self.counts is not None and self.counts.height:
            snap.keyed["counts"] = self.counts
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        panes = snapshot.keyed.get("panes")
        counts = snapshot.keyed.get("counts")
        if self.store is not None:
            if counts is not None and counts.height:
                self.store.restore(panes, counts)
            return
        self.panes = panes
        self.counts = counts
