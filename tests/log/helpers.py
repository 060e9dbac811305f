"""Helpers of the embedded-log tests."""

from __future__ import annotations

import polars as pl

from sluice.log import Log
from sluice.log.reader import PartitionReader


def read_all(log: Log, topic: str, partition: int = 0, offset: int | None = None) -> pl.DataFrame:
    """Every record of a partition from ``offset`` (default: the log start) on."""
    part = log.partition(topic, partition)
    start = log.offsets(topic, partition)[0] if offset is None else offset
    r = PartitionReader(part, start)
    frames = []
    while (t := r.read()) is not None:
        frames.append(pl.from_arrow(t))
    r.close()
    if not frames:
        return pl.DataFrame(
            schema={"offset": pl.Int64, "timestamp": pl.Int64, "key": pl.Binary, "value": pl.Binary}
        )
    return pl.concat(frames, how="diagonal_relaxed")


def values(log: Log, topic: str, partition: int = 0) -> list[bytes | None]:
    return read_all(log, topic, partition)["value"].to_list()
