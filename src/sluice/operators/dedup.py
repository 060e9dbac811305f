"""Deduplication by key within a time bound (vectorized).

A row is a duplicate when a kept row with the same key has an event time less
than ``within`` away from it; the first occurrence (in arrival order) is kept.
Kept keys are remembered until the watermark passes ``first + within``.
"""

from __future__ import annotations

import polars as pl

from sluice.operators.base import Operator
from sluice.runtime.messages import TIME
from sluice.state.snapshot import Snapshot

FIRST = "__first"


class DedupOperator(Operator):
    def __init__(self, name: str, keys: list[str], within_ms: int, event_time: bool) -> None:
        super().__init__()
        self.name = name
        self.keys = keys
        self.within = within_ms
        self.event_time = event_time
        self.state = pl.DataFrame()

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
        if self.state.height:
            j = b.join(self.state, on=self.keys, how="left")
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
        merged = pl.concat([self.state, new_state]) if self.state.height else new_state
        self.state = merged.unique(self.keys, keep="last", maintain_order=False)
        idx = keep.get_column("__r").sort()
        out = batch.with_row_index("__r").join(idx.to_frame(), on="__r", how="semi").drop("__r")
        dropped = batch.height - out.height
        if dropped:
            self.metrics.add("duplicates_dropped", dropped)
        self.emit(out)

    def on_watermark(self, time: int) -> None:
        if self.state.height and self.event_time:
            self.state = self.state.filter(pl.col(FIRST) + self.within > time)

    def snapshot_state(self) -> Snapshot:
        snap = Snapshot(keys=self.keys, watermark=self.watermark)
        if self.state.height:
            snap.keyed["first_seen"] = self.state
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        self.state = snapshot.keyed.get("first_seen", pl.DataFrame())
