"""Shared machinery of windowed aggregation: rows -> partials -> merged -> results."""

from __future__ import annotations

from collections.abc import Sequence
from math import gcd

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
        self,
        parts: pl.DataFrame | pl.LazyFrame,
        by: Sequence[str],
        extra: Sequence[pl.Expr] = (),
    ) -> pl.DataFrame:
        if isinstance(parts, pl.LazyFrame):
            out = parts.group_by(list(by)).agg(*self.merge_exprs, *extra).collect()
        else:
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
    def inputs(self) -> list[str] | None:
        """The input columns the aggregations read (None: possibly all)."""
        cols: list[str] = []
        for a in self.aggs:
            if a.inputs is None:
                return None
            cols.extend(c for c in a.inputs if c not in cols)
        return cols

    @property
    def out_names(self) -> list[str]:
        return [a.out for a in self.aggs]

    @property
    def order_free(self) -> bool:
        """Whether merging partials in another order than the rows arrived
        gives the same results: not for ``collect_list`` (its list is in
        arrival order) nor for user aggregators (``merge`` may not commute)."""
        return not any(
            a.post_merge is not None or any(c.endswith("_collect_list") for c in a.partial_cols)
            for a in self.aggs
        )


PS = "__ps"  # pane start


class Panes:
    """Slicing of sliding windows into panes (Flink's window "slices").

    A sliding window of ``size`` every ``slide`` (both in ms, ``offset`` mod
    ``slide``) is the union of consecutive panes of ``gcd(size, slide)``: each
    row is pre-aggregated once, into its pane, and a window's result is the
    merge of its ``size / pane`` pane partials. Panes are aligned to the same
    offset, so a pane lies either wholly inside a window or wholly outside.

    >>> p = Panes(10_000, 4_000)
    >>> p.pane, p.windows_of(pl.DataFrame({PS: [6_000]})).sort("__ws")["__ws"].to_list()
    (2000, [0, 4000])
    """

    def __init__(self, size: int, slide: int, offset: int = 0) -> None:
        self.size = size
        self.slide = slide
        self.offset = offset
        self.pane = gcd(size, slide)
        #: upper bound on the number of windows one pane belongs to
        self.per_pane = -(-size // slide)

    def pane_start(self, t: pl.Expr) -> pl.Expr:
        return t - (t - self.offset) % self.pane

    def last_start(self, t: pl.Expr) -> pl.Expr:
        """Start of the latest window containing time (or pane start) ``t``."""
        return t - (t - self.offset) % self.slide

    def cleanup(self, ps: pl.Expr, lateness: int) -> pl.Expr:
        """Watermark from which the pane is no longer needed (its last window's
        ``end - 1 + lateness``)."""
        return self.last_start(ps) + (self.size - 1 + lateness)

    def first_end_after(self, ps: pl.Expr, fired: int) -> pl.Expr:
        """``end - 1`` of the earliest window of the pane that ends after
        ``fired`` (null when every window of the pane ended by then)."""
        if fired >= 2**62:
            return pl.lit(None, pl.Int64)
        lo = ps - (self.size - self.pane)
        if fired > -(2**62):
            lo = pl.max_horizontal(lo, pl.lit(fired - self.size + 2, pl.Int64))
        w = lo + (self.offset - lo) % self.slide
        return pl.when(w <= ps).then(w + (self.size - 1))

    def windows_of(
        self, panes: pl.DataFrame, after: int | None = None, upto: int | None = None
    ) -> pl.DataFrame:
        """Each pane row once per window it belongs to, with ``__ws``/``__we``;
        only windows with ``after < end - 1 <= upto`` (when given)."""
        return self.windows_lazy(panes.lazy(), after, upto).collect()

    def windows_lazy(
        self, panes: pl.LazyFrame, after: int | None = None, upto: int | None = None
    ) -> pl.LazyFrame:
        """:meth:`windows_of` as one lazy query (fused with what follows)."""
        ps = pl.col(PS)
        last = self.last_start(ps)
        parts = []
        for k in range(self.per_pane):
            ws = last - k * self.slide
            cond = ws > ps - self.size
            if after is not None:
                cond = cond & (ws + (self.size - 1) > after)
            if upto is not None:
                cond = cond & (ws + (self.size - 1) <= upto)
            parts.append(panes.filter(cond).with_columns(ws.alias("__ws")))
        out = pl.concat(parts) if len(parts) > 1 else parts[0]
        return out.with_columns((pl.col("__ws") + self.size).alias("__we"))

    def late_pairs(self, t: pl.Expr, wm: int, lateness: int) -> tuple[pl.Expr, pl.Expr]:
        """For rows at time ``t`` and watermark ``wm``: (row is late for all its
        windows, number of its windows it is late for)."""
        last = self.last_start(t)
        cut = wm - self.size + 1 - lateness  # windows starting at or before are gone
        n = pl.lit(0, pl.Int64)
        for k in range(self.per_pane):
            ws = last - k * self.slide
            n = n + ((ws > t - self.size) & (ws <= cut)).cast(pl.Int64)
        return last <= cut, n
