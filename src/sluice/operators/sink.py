"""The sink operator: strips internal columns and hands batches to a writer."""

from __future__ import annotations

import polars as pl

from sluice.connectors.base import SinkWriter
from sluice.operators.base import Operator, OperatorContext


def user_columns(batch: pl.DataFrame) -> pl.DataFrame:
    """Drop the engine's internal ``__`` columns."""
    internal = [c for c in batch.columns if c.startswith("__")]
    return batch.drop(internal) if internal else batch


class SinkOperator(Operator):
    def __init__(self, name: str, writer: SinkWriter) -> None:
        super().__init__()
        self.name = name
        self.writer = writer
        self.ended = False
        self._closed = False

    def open(self, ctx: OperatorContext) -> None:
        super().open(ctx)
        self.writer.open()

    def process_batch(self, batch: pl.DataFrame) -> None:
        self.writer.write(user_columns(batch))
        self.metrics.records_out += batch.height

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.writer.close()
