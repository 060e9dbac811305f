"""Shared machinery of windowed aggregation: rows -> partials -> merged -> results."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from sluice.operators.aggregations import BoundAgg


class Partials:
    """Applies a list of bound aggregations as whole-batch kernels."""

    def __init__(self, aggs: list[BoundAgg]) -> None:
        self.aggs = aggs
        self.pre = [e for a in aggs for e in a.pre]
        self.partial = [e for a in aggs for e in a.partial]
        self.merge_exprs = [e for a in aggs for e in a.merge]
        self.cols = [c for a in aggs for c in a.partial_cols]
        self._post_partial = [a.post_partial for a in aggs if a.post_partial]
        self._post_merge = [a.post_merge for a in aggs if a.post_merge]

    def from_rows(
        self, rows: pl.DataFrame, by: Sequence[str], extra: Sequence[pl.Expr] = ()
    ) -> pl.DataFrame:
        if self.pre:
            rows = rows.with_columns(self.pre)
        out = rows.group_by(list(by)).agg(*self.partial, *extra)
        for f in self._post_partial:
            out = f(out)
        return out

    def merge(
        self, parts: pl.DataFrame, by: Sequence[str], extra: Sequence[pl.Expr] = ()
    ) -> pl.DataFrame:
        out = parts.group_by(list(by)).agg(*self.merge_exprs, *extra)
        for f in self._post_merge:
            out = f(out)
        return out

    def results(self, parts: pl.DataFrame) -> pl.DataFrame:
        """Replace partial columns with result columns (in declaration order)."""
        exprs = []
        series = []
        for a in self.aggs:
            if a.finalize is not None:
                series.append(a.finalize(parts).alias(a.out))
            else:
                assert a.final is not None
                exprs.append(a.final.alias(a.out))
        out = parts.with_columns(*exprs, *series) if (exprs or series) else parts
        return out.drop(self.cols)

    @property
    def out_names(self) -> list[str]:
        return [a.out for a in self.aggs]
