"""Key groups: how keys map to subtasks.

A key belongs to one of ``MAX_PARALLELISM`` key groups (a fixed number, as in
Flink), and key group ``g`` runs on subtask ``g * parallelism // MAX_PARALLELISM``.
Because the number of key groups never changes, keyed state snapshotted at one
parallelism can be re-sliced to another.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    """Split ``batch`` by target subtask (only non-empty parts are returned)."""
    target = batch.select(subtask_expr(keys, parallelism).alias("t")).get_column("t")
    parts: dict[int, pl.DataFrame] = {}
    for (t,), part in (
        batch.with_columns(target.alias("__target"))
        .partition_by("__target", as_dict=True, maintain_order=True)
        .items()
    ):
        parts[int(t)] = part.drop("__target")  # type: ignore[call-overload]
    return parts
