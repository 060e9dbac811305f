"""Stateless operators: vectorized (filter, select, with_columns) and the
per-record slow path (map, flat_map, filter with a Python predicate)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import polars as pl

from sluice.operators.base import Operator
from sluice.runtime.messages import TIME


class Passthrough(Operator):
    """Forwards batches unchanged (union, explicit exchanges)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def process_batch(self, batch: pl.DataFrame) -> None:
        self.emit(batch)


class FilterOp(Operator):
    def __init__(self, name: str, predicate: pl.Expr) -> None:
        super().__init__()
        self.name = name
        self.predicate = predicate

    def process_batch(self, batch: pl.DataFrame) -> None:
        self.emit(batch.filter(self.predicate))


class SelectOp(Operator):
    """``select``/``with_columns``; the event-time column is kept."""

    def __init__(self, name: str, exprs: list[Any], named: dict[str, Any], keep_all: bool) -> None:
        super().__init__()
        self.name = name
        self.exprs = exprs
        self.named = named
        self.keep_all = keep_all
        #: a select of plain column names: taken without the query engine
        self.names = None if keep_all or named else _plain_names(exprs)

    def process_batch(self, batch: pl.DataFrame) -> None:
        if self.keep_all:
            out = batch.with_columns(*self.exprs, **self.named)
        elif self.names is not None and all(c in batch.schema for c in self.names):
            names = self.names
            if TIME in batch.schema and TIME not in names:
                names = [*names, TIME]
            out = batch[names]
        else:
            out = batch.select(*self.exprs, **self.named)
            if TIME in batch.columns and TIME not in out.columns:
                out = out.hstack([batch.get_column(TIME)])
        self.emit(out)


def _plain_names(exprs: list[Any]) -> list[str] | None:
    """The column names when every expression is one (a string or ``pl.col(name)``),
    distinct; else None."""
    names: list[str] = []
    for e in exprs:
        if isinstance(e, str):
            name = e
        elif isinstance(e, pl.Expr) and e.meta.is_column():
            name = e.meta.output_name()
        else:
            return None
        if name in names:
            return None
        names.append(name)
    return names or None


def _user_rows(batch: pl.DataFrame) -> list[dict[str, Any]]:
    cols = [c for c in batch.columns if not c.startswith("__")]
    return batch.select(cols).to_dicts()


def _frame(rows: list[dict[str, Any]], times: list[int] | None, name: str) -> pl.DataFrame:
    try:
        df = pl.DataFrame(rows, infer_schema_length=None)
    except Exception as e:  # the user's function returned inconsistent rows
        from sluice.errors import JobError

        raise JobError(
            f"operator {name!r}: cannot build a batch from the returned rows: {e}"
        ) from e
    if times is not None:
        df = df.with_columns(pl.Series(TIME, times, dtype=pl.Int64))
    return df


class MapOp(Operator):
    """Per-record ``fn(row: dict) -> dict`` (the slow path). Each output keeps
    the event time of its input."""

    def __init__(self, name: str, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        super().__init__()
        self.name = name
        self.fn = fn

    def process_batch(self, batch: pl.DataFrame) -> None:
        fn = self.fn
        rows = [fn(r) for r in _user_rows(batch)]
        for r in rows:
            if not isinstance(r, dict):
                from sluice.errors import JobError

                raise JobError(
                    f"operator {self.name!r}: map function must return a dict, got {type(r).__name__}"
                )
        times = batch.get_column(TIME).to_list() if TIME in batch.columns else None
        self.emit(_frame(rows, times, self.name))


class FlatMapOp(Operator):
    """Per-record ``fn(row) -> iterable of dicts``."""

    def __init__(self, name: str, fn: Callable[[dict[str, Any]], Iterable[dict[str, Any]]]) -> None:
        super().__init__()
        self.name = name
        self.fn = fn

    def process_batch(self, batch: pl.DataFrame) -> None:
        has_time = TIME in batch.columns
        in_times = batch.get_column(TIME).to_list() if has_time else None
        rows: list[dict[str, Any]] = []
        times: list[int] = []
        for i, r in enumerate(_user_rows(batch)):
            for out in self.fn(r) or ():
                rows.append(out)
                if in_times is not None:
                    times.append(in_times[i])
        if rows:
            self.emit(_frame(rows, times if has_time else None, self.name))


class PredicateOp(Operator):
    """``filter`` with a Python predicate ``fn(row) -> bool`` (slow path)."""

    def __init__(self, name: str, fn: Callable[[dict[str, Any]], bool]) -> None:
        super().__init__()
        self.name = name
        self.fn = fn

    def process_batch(self, batch: pl.DataFrame) -> None:
        mask = pl.Series([bool(self.fn(r)) for r in _user_rows(batch)], dtype=pl.Boolean)
        self.emit(batch.filter(mask))
