"""Deduplication by key within a time bound (vectorized).

A row is a duplicate when a kept row with the same key has an event time less
than ``within`` away from it; the first occurrence (in arrival order) is kept.
Kept keys are remembered until the watermark passes ``first + within`` (with
processing time: until the clock does).

With the RocksDB state backend the key -> first-seen table lives in RocksDB
(:class:`sluice.state.rocks_tables.RocksDedupStore`): each batch looks up only
its own keys (one multi-get) and the expiry is a range scan of a time index.
"""

from __future__ import annotations

import polars as pl

from sluice.operators.stored import StoreBackedOperator
from sluice.runtime.messages import TIME
from sluice.state.rocks_tables import RocksDedupStore
from sluice.state.rocksdb import RocksDBStateBackend
from sluice.state.snapshot import Deferred, Snapshot

FIRST = "__first"


class DedupOperator(StoreBackedOperator):
    def __init__(self, name: str, keys: list[str], within_ms: int, event_time: bool) -> None:
        super().__init__()
        self.name = name
        self.keys = keys
        self.within = within_ms
        self.event_time = event_time
        self.state = pl.DataFrame()
        self.store: RocksDedupStore | None = None
        self._next_expiry = 0

    def _open_store(self, backend: RocksDBStateBackend) -> RocksDedupStore:
        return RocksDedupStore(backend, self.keys, self.within)

    def _times(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self.event_time and TIME in batch.columns:
            return batch
        assert self.ctx is not None
        return batch.with_columns(pl.lit(self.ctx.now(), pl.Int64).alias("__dedup_t"))

    def process_batch(self, batch: pl.DataFrame) -> None:
        tcol = TIME if (self.event_time and TIME in batch.columns) else "__dedup_t"
        b = self._times(batch).with_row_index("__r")
        w = self.within
        near = (pl.col(tcol) - pl.col(FIRST)).abs() < w
        if tcol != TIME:
            self._expire_processing(b.get_column(tcol)[0])
        state = self.state
        if self.store is not None:
            found = self.store.lookup(b.select(self.keys).unique())
            state = found if found is not None else pl.DataFrame()
        if state.height:
            j = b.join(state, on=self.keys, how="left")
            cand = j.filter(pl.col(FIRST).is_null() | ~near).drop(FIRST)
        else:
            cand = b
        kept: list[pl.DataFrame] = []
        while cand.height:
            firsts = cand.unique(self.keys, keep="first", maintain_order=True)
            kept.append(firsts)
            marks = firsts.select(*self.keys, pl.col(tcol).alias(FIRST))
            rest = cand.join(firsts.select("__r"), on="__r", how="anti")
            rest = rest.join(marks, on=self.keys, how="left").filter(~near).drop(FIRST)
            cand = rest
        if not kept:
            self.metrics.add("duplicates_dropped", batch.height)
            return
        keep = pl.concat(kept)
        new_state = keep.select(*self.keys, pl.col(tcol).alias(FIRST))
        # newest first occurrence per key wins in state
        if self.store is not None:
            self.store.put(new_state.unique(self.keys, keep="last", maintain_order=True))
        else:
            merged = pl.concat([self.state, new_state]) if self.state.height else new_state
            self.state = merged.unique(self.keys, keep="last", maintain_order=False)
        idx = keep.get_column("__r").sort()
        out = batch.with_row_index("__r").join(idx.to_frame(), on="__r", how="semi").drop("__r")
        dropped = batch.height - out.height
        if dropped:
            self.metrics.add("duplicates_dropped", dropped)
        self.emit(out)

    def on_watermark(self, time: int) -> None:
        if self.event_time:
            self._expire(time)

    def _expire(self, time: int) -> None:
        if self.store is not None:
            self.store.expire(time)
        elif self.state.height:
            self.state = self.state.filter(pl.col(FIRST) + self.within > time)

    def _expire_processing(self, now: int) -> None:
        # processing times only grow: a key first seen `within` ago can match
        # nothing any more (checked at most every `within`, so it costs little)
        if now >= self._next_expiry:
            self._next_expiry = now + max(self.within, 1)
            self._expire(now)

    def _snapshot(self, checkpoint_id: int | None) -> Snapshot:
        snap = Snapshot(keys=self.keys, watermark=self.watermark)
        if self.store is not None and self._backend is not None:
            if checkpoint_id is None or self.store.key_schema is None:
                st = self.store.table()
                if st is not None and st.height:
                    snap.keyed["first_seen"] = st
                return snap
            # asynchronous: a RocksDB checkpoint now, scanned on the writer thread
            copy = self._backend.checkpoint_copy(checkpoint_id)
            reader = RocksDedupStore(copy, self.keys, self.within)
            reader.key_schema = self.store.key_schema

            def build() -> dict[str, pl.DataFrame]:
                st = reader.table()
                return {"first_seen": st} if st is not None else {}

            snap.deferred.append(Deferred(build, copy.close))
            return snap
        if self.state.height:
            snap.keyed["first_seen"] = self.state
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        st = snapshot.keyed.get("first_seen", pl.DataFrame())
        if self.store is not None:
            if st.height:
                self.store.restore(st)
        else:
            self.state = st
