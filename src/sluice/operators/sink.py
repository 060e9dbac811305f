"""The sink operator: strips internal columns and hands batches to a writer."""

from __future__ import annotations

from typing import Any

import polars as pl

from sluice.connectors.base import SinkWriter
from sluice.operators.base import Operator, OperatorContext
from sluice.state.snapshot import Snapshot


def user_columns(batch: pl.DataFrame) -> pl.DataFrame:
    """Drop the engine's internal ``__`` columns."""
    cols = batch.columns
    keep = [c for c in cols if not c.startswith("__")]
    if len(keep) == len(cols):
        return batch
    return batch[keep] if keep else batch.drop(cols)


class SinkOperator(Operator):
    def __init__(self, name: str, writer: SinkWriter) -> None:
        super().__init__()
        self.name = name
        self.writer = writer
        self.ended = False
        self._closed = False
        self._txns: dict[int, dict[str, Any]] = {}

    def open(self, ctx: OperatorContext) -> None:
        super().open(ctx)
        self.writer.open()

    def process_batch(self, batch: pl.DataFrame) -> None:
        self.writer.write(user_columns(batch))
        self.metrics.records_out += batch.height

    def on_end(self) -> None:
        self.ended = True

    def checkpoint_snapshot(self, checkpoint_id: int) -> Snapshot:
        """Phase one of two-phase commit: pre-commit what was written so far;
        the transaction is stored in the checkpoint."""
        txn = self.writer.pre_commit(checkpoint_id)
        self._txns[checkpoint_id] = txn
        return Snapshot(meta={"txn": txn})

    def commit(self, checkpoint_id: int) -> None:
        """Phase two, once the checkpoint is complete."""
        txn = self._txns.pop(checkpoint_id, None)
        for old in [c for c in self._txns if c < checkpoint_id]:
            self._txns.pop(old)  # superseded: their files are in the newer txn
        if txn is not None:
            self.writer.commit(checkpoint_id, txn)

    def close(self) -> None:
        """Close the writer; a transactional writer is closed by the runtime
        after the final commit instead."""
        if not self.writer.transactional:
            self.close_writer()

    def close_writer(self) -> None:
        if not self._closed:
            self._closed = True
            self.writer.close()
