"""Lookup join: enrich each row from a static table held by every subtask
(Flink's lookup join against a dimension table, Beam's side input).

Stateless: the table is loaded once when the subtask opens (a DataFrame given
in the program, or a Parquet/CSV file), and every batch is hash-joined with
it. Nothing is checkpointed; the table is read again on restart.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from sluice.errors import ConfigError
from sluice.operators.base import Operator, OperatorContext
from sluice.operators.joins import canonical_key, check_columns, key_names
from sluice.runtime.messages import TIME


def read_table(source: pl.DataFrame | str | os.PathLike[str], what: str) -> pl.DataFrame:
    """The lookup table: the DataFrame itself, or a Parquet/CSV file read once."""
    if isinstance(source, pl.DataFrame):
        return source
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{what}: table file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pl.read_parquet(path)
    if suffix == ".csv":
        return pl.read_csv(path)
    raise ConfigError(
        f"{what}: cannot read table {str(path)!r}: give a .parquet or .csv file, or a DataFrame"
    )


def _common_dtype(a: pl.DataType, b: pl.DataType) -> pl.DataType | None:
    if a == b:
        return a
    if a.is_integer() and b.is_integer():
        return pl.Int64()
    if a.is_float() and b.is_float():
        return pl.Float64()
    if {type(a), type(b)} <= {pl.String, pl.Categorical, pl.Enum}:
        return pl.String()
    return None


class LookupJoinOp(Operator):
    """Joins each batch with a static table (inner or left)."""

    def __init__(
        self,
        name: str,
        table: pl.DataFrame | str | os.PathLike[str],
        left_keys: list[str],
        right_keys: list[str],
        how: str,
        suffix: str,
    ) -> None:
        super().__init__()
        self.name = name
        self.source = table
        self.left_keys = left_keys
        self.right_keys = right_keys
        self.how = how
        self.suffix = suffix
        self.ik = key_names(len(left_keys))
        self.table: pl.DataFrame | None = None
        self._prepared: dict[tuple[object, ...], tuple[pl.DataFrame, list[pl.DataType]]] = {}

    def open(self, ctx: OperatorContext) -> None:
        super().open(ctx)
        table = read_table(self.source, self.name)
        check_columns(self.name, "lookup table", table, self.right_keys)
        self.table = table

    def _prepare(self, batch: pl.DataFrame) -> tuple[pl.DataFrame, list[pl.DataType]]:
        """The table in join layout for this batch schema (cached per schema)."""
        sig = tuple((c, batch.schema[c]) for c in batch.columns)
        got = self._prepared.get(sig)
        if got is not None:
            return got
        assert self.table is not None
        table = self.table
        dtypes: list[pl.DataType] = []
        for lk, rk in zip(self.left_keys, self.right_keys, strict=True):
            a = canonical_key(batch.get_column(lk).head(0), self.name, "stream").dtype
            b = canonical_key(table.get_column(rk), self.name, "lookup table").dtype
            common = _common_dtype(a, b)
            if common is None:
                raise ConfigError(
                    f"{self.name}: key columns {lk!r} (stream, {batch.schema[lk]}) and {rk!r} "
                    f"(lookup table, {table.schema[rk]}) have types that cannot be compared; "
                    "cast one of them"
                )
            dtypes.append(common)
        names = set(batch.columns)
        sel: list[pl.Expr] = [
            pl.col(rk).cast(dt).alias(ik)
            for rk, dt, ik in zip(self.right_keys, dtypes, self.ik, strict=True)
        ]
        for c in table.columns:
            if c in self.right_keys or c == TIME:
                continue
            out = c
            while out in names:
                out += self.suffix
            names.add(out)
            sel.append(pl.col(c).alias(out))
        prepared = table.select(sel)
        self._prepared[sig] = (prepared, dtypes)
        return prepared, dtypes

    def process_batch(self, batch: pl.DataFrame) -> None:
        check_columns(self.name, "stream", batch, self.left_keys)
        table, dtypes = self._prepare(batch)
        probe = batch.with_columns(
            pl.col(lk).cast(dt).alias(ik)
            for lk, dt, ik in zip(self.left_keys, dtypes, self.ik, strict=True)
        )
        out = probe.join(table, on=self.ik, how=self.how, coalesce=True)  # type: ignore[arg-type]
        self.emit(out.drop(self.ik))
