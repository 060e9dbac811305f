"""Key groups: how keys map to subtasks.

A key belongs to one of ``MAX_PARALLELISM`` key groups (a fixed number, as in
Flink), and key group ``g`` runs on subtask ``g * parallelism // MAX_PARALLELISM``.
Because the number of key groups never changes, keyed state snapshotted at one
parallelism can be re-sliced to another.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

MAX_PARALLELISM = 128
_SEED = 0x5EED


def key_group_expr(keys: Sequence[str]) -> pl.Expr:
    """Polars expression giving the key group (0..MAX_PARALLELISM-1) of each row."""
    h = pl.col(keys[0]).hash(_SEED) if len(keys) == 1 else pl.struct(list(keys)).hash(_SEED)
    return (h % MAX_PARALLELISM).cast(pl.Int64)


def subtask_expr(keys: Sequence[str], parallelism: int) -> pl.Expr:
    """Polars expression giving the target subtask of each row."""
    return key_group_expr(keys) * parallelism // MAX_PARALLELISM


def partition(
    batch: pl.DataFrame, keys: Sequence[str], parallelism: int
) -> dict[int, pl.DataFrame]:
    """Split ``batch`` by target subtask (only non-empty parts are returned).

    One stable argsort and contiguous slices: rows keep their order per target.
    """
    target = batch.select(subtask_expr(keys, parallelism).alias("t")).to_series().to_numpy()
    counts = np.bincount(target, minlength=parallelism)
    nonempty = np.flatnonzero(counts)
    if len(nonempty) == 1:
        return {int(nonempty[0]): batch}
    order = np.argsort(target, kind="stable")
    ordered = batch[order]
    parts: dict[int, pl.DataFrame] = {}
    start = 0
    for t, c in enumerate(counts.tolist()):
        if c:
            parts[t] = ordered.slice(start, c)
            start += c
    return parts
