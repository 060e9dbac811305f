"""Aggregations as mergeable partial states, applied as vectorized kernels.

Every aggregation is three steps, each a Polars expression in a ``group_by``:
``partial`` (raw rows -> partial columns), ``merge`` (partials -> partial) and
``final`` (partial -> result). Windows keep only partials, so window state is
small and merging (sessions, lateness, parallel partials) is exact.
"""

from __future__ import annotations

import math
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from sluice.errors import ConfigError
from sluice.runtime.messages import TIME


@dataclass
class BoundAgg:
    """An aggregation bound to its output column and partial column names."""

    out: str
    pre: list[pl.Expr] = field(default_factory=list)
    partial: list[pl.Expr] = field(default_factory=list)
    merge: list[pl.Expr] = field(default_factory=list)
    final: pl.Expr | None = None
    partial_cols: list[str] = field(default_factory=list)
    post_partial: Callable[[pl.DataFrame], pl.DataFrame] | None = None
    post_merge: Callable[[pl.DataFrame], pl.DataFrame] | None = None
    finalize: Callable[[pl.DataFrame], pl.Series] | None = None
    #: the input columns the expressions read (None: possibly every column)
    inputs: list[str] | None = None


class Agg(ABC):
    """An aggregation; ``sl.agg.sum("amount")`` and friends build these."""

    @abstractmethod
    def bind(self, out: str, prefix: str) -> BoundAgg: ...


@dataclass(frozen=True)
class _Simple(Agg):
    kind: str
    column: str | None = None

    def bind(self, out: str, prefix: str) -> BoundAgg:
        p = f"{prefix}_{self.kind}"
        c = pl.col(self.column) if self.column else None
        if self.kind == "count":
            part = pl.len() if c is None else c.count()
            return BoundAgg(
                out, [], [part.cast(pl.Int64).alias(p)], [pl.col(p).sum()], pl.col(p), [p]
            )
        assert c is not None
        if self.kind in ("sum", "min", "max"):
            fn = {"sum": "sum", "min": "min", "max": "max"}[self.kind]
            return BoundAgg(
                out,
                [],
                [getattr(c, fn)().alias(p)],
                [getattr(pl.col(p), fn)()],
                pl.col(p),
                [p],
            )
        if self.kind == "mean":
            s, n = p + "_s", p + "_n"
            return BoundAgg(
                out,
                [],
                [c.sum().cast(pl.Float64).alias(s), c.count().cast(pl.Int64).alias(n)],
                [pl.col(s).sum(), pl.col(n).sum()],
                pl.when(pl.col(n) > 0).then(pl.col(s) / pl.col(n)).otherwise(None),
                [s, n],
            )
        if self.kind in ("first", "last"):
            v, t = p + "_v", p + "_t"
            pick = "arg_min" if self.kind == "first" else "arg_max"
            tfn = "min" if self.kind == "first" else "max"
            if self.kind == "last":
                # last by event time; among equal times the last to arrive wins
                vexpr = c.filter(pl.col(TIME) == pl.col(TIME).max()).last()
                mexpr = pl.col(v).filter(pl.col(t) == pl.col(t).max()).last()
            else:
                vexpr = c.get(getattr(pl.col(TIME), pick)())
                mexpr = pl.col(v).get(getattr(pl.col(t), pick)())
            return BoundAgg(
                out,
                [],
                [vexpr.alias(v), getattr(pl.col(TIME), tfn)().alias(t)],
                [mexpr, getattr(pl.col(t), tfn)()],
                pl.col(v),
                [v, t],
            )
        if self.kind == "count_distinct":
            return BoundAgg(
                out,
                [],
                [c.drop_nulls().unique().alias(p)],
                [pl.col(p).explode().drop_nulls().unique()],
                pl.col(p).list.len().cast(pl.Int64),
                [p],
            )
        if self.kind == "collect_list":
            return BoundAgg(
                out,
                [],
                [c.alias(p)],
                [pl.col(p).explode()],
                pl.col(p),
                [p],
            )
        raise ConfigError(f"unknown aggregation {self.kind!r}")  # pragma: no cover


@dataclass(frozen=True)
class _Quantile(Agg):
    """DDSketch-style quantile: log-spaced buckets with relative accuracy ``alpha``."""

    column: str
    q: float
    alpha: float = 0.01

    def bind(self, out: str, prefix: str) -> BoundAgg:
        gamma = (1 + self.alpha) / (1 - self.alpha)
        lg = math.log(gamma)
        b, p = f"{prefix}_b", f"{prefix}_q"
        x = pl.col(self.column).cast(pl.Float64)
        k = (x.abs().log() / lg).ceil().cast(pl.Int64) + 2**31
        code = (
            pl.when(x > 0)
            .then(k)
            .when(x < 0)
            .then(-k)
            .when(x == 0)
            .then(pl.lit(0, pl.Int64))
            .otherwise(None)
        )
        q = self.q

        def finalize(df: pl.DataFrame) -> pl.Series:
            long = (
                df.select(pl.int_range(pl.len()).alias("__row"), pl.col(p))
                .explode(p)
                .drop_nulls(p)
                .unnest(p)
                .rename({b: "__code"})
                .drop_nulls("__code")
            )
            long = (
                long.group_by("__row", "__code")
                .agg(pl.col("count").sum())
                .sort("__row", "__code")
                .with_columns(
                    pl.col("count").cum_sum().over("__row").alias("__cum"),
                    pl.col("count").sum().over("__row").alias("__tot"),
                )
            )
            pick = (
                long.filter(pl.col("__cum") > q * (pl.col("__tot") - 1))
                .group_by("__row")
                .agg(pl.col("__code").first())
            )
            c = pl.col("__code")
            kk = (c.abs() - 2**31).cast(pl.Float64)
            est = 2 * (kk * lg).exp() / (gamma + 1)
            val = pick.select(
                "__row",
                pl.when(c > 0).then(est).when(c < 0).then(-est).otherwise(0.0).alias("v"),
            )
            res = (
                pl.DataFrame({"__row": pl.int_range(df.height, eager=True)})
                .join(val, on="__row", how="left", maintain_order="left")
                .get_column("v")
            )
            return res

        return BoundAgg(
            out,
            [code.alias(b)],
            [pl.col(b).drop_nulls().value_counts().alias(p)],
            [pl.col(p).explode().drop_nulls()],
            None,
            [p],
            finalize=finalize,
        )


class Aggregator(ABC):
    """A user-defined aggregation (the slow, Python path).

    Subclass it and implement ``create``, ``add``, ``merge`` and ``result``;
    optionally ``add_batch(acc, values: pl.Series)`` to consume a whole group's
    values at once (vectorized). Accumulators must be picklable.

    >>> class Range(Aggregator):
    ...     def create(self): return None
    ...     def add(self, acc, v): return (v, v) if acc is None else (min(acc[0], v), max(acc[1], v))
    ...     def merge(self, a, b):
    ...         if a is None or b is None: return a if b is None else b
    ...         return (min(a[0], b[0]), max(a[1], b[1]))
    ...     def result(self, acc): return None if acc is None else acc[1] - acc[0]
    >>> spec = custom(Range(), "price")
    """

    @abstractmethod
    def create(self) -> Any: ...

    @abstractmethod
    def add(self, acc: Any, value: Any) -> Any: ...

    @abstractmethod
    def merge(self, a: Any, b: Any) -> Any: ...

    @abstractmethod
    def result(self, acc: Any) -> Any: ...

    def add_batch(self, acc: Any, values: pl.Series) -> Any:
        for v in values:
            acc = self.add(acc, v)
        return acc


@dataclass(frozen=True)
class _Custom(Agg):
    agg: Aggregator
    column: str | None
    dtype: pl.DataType | None = None

    def bind(self, out: str, prefix: str) -> BoundAgg:
        p = f"{prefix}_u"
        a = self.agg
        src = pl.col(self.column) if self.column else pl.struct(pl.all().exclude("^__.*$"))

        def post_partial(df: pl.DataFrame) -> pl.DataFrame:
            accs = [pickle.dumps(a.add_batch(a.create(), pl.Series(vals))) for vals in df[p]]
            return df.with_columns(pl.Series(p, accs, dtype=pl.Binary))

        def post_merge(df: pl.DataFrame) -> pl.DataFrame:
            accs = []
            for blobs in df[p]:
                acc = None
                first = True
                for blob in blobs:
                    v = pickle.loads(blob)
                    acc = v if first else a.merge(acc, v)
                    first = False
                accs.append(pickle.dumps(acc))
            return df.with_columns(pl.Series(p, accs, dtype=pl.Binary))

        def finalize(df: pl.DataFrame) -> pl.Series:
            vals = [a.result(pickle.loads(blob)) for blob in df[p]]
            return pl.Series(out, vals, dtype=self.dtype) if self.dtype else pl.Series(out, vals)

        return BoundAgg(
            out,
            [],
            [src.alias(p)],
            [pl.col(p)],
            None,
            [p],
            post_partial=post_partial,
            post_merge=post_merge,
            finalize=finalize,
        )


def count(column: str | None = None) -> Agg:
    """Number of rows (or of non-null values of ``column``)."""
    return _Simple("count", column)


def sum(column: str) -> Agg:
    """Sum of ``column``."""
    return _Simple("sum", column)


def min(column: str) -> Agg:
    """Minimum of ``column``."""
    return _Simple("min", column)


def max(column: str) -> Agg:
    """Maximum of ``column``."""
    return _Simple("max", column)


def mean(column: str) -> Agg:
    """Arithmetic mean of the non-null values of ``column``."""
    return _Simple("mean", column)


def first(column: str) -> Agg:
    """Value of ``column`` at the earliest event time (ties: first to arrive)."""
    return _Simple("first", column)


def last(column: str) -> Agg:
    """Value of ``column`` at the latest event time (ties: last to arrive)."""
    return _Simple("last", column)


def count_distinct(column: str) -> Agg:
    """Exact number of distinct non-null values of ``column``."""
    return _Simple("count_distinct", column)


def collect_list(column: str) -> Agg:
    """All values of ``column`` as a list, in arrival order."""
    return _Simple("collect_list", column)


def quantile(column: str, q: float, *, relative_accuracy: float = 0.01) -> Agg:
    """Approximate ``q``-quantile with relative error at most ``relative_accuracy``
    (a DDSketch: mergeable, memory logarithmic in the value range)."""
    if not 0.0 <= q <= 1.0:
        raise ConfigError(f"quantile: q must be within [0, 1], got {q}")
    if not 0.0 < relative_accuracy < 1.0:
        raise ConfigError(f"quantile: relative_accuracy must be in (0, 1), got {relative_accuracy}")
    return _Quantile(column, q, relative_accuracy)


def custom(agg: Aggregator, column: str | None = None, *, dtype: Any = None) -> Agg:
    """A user aggregation over ``column`` (or over whole rows as dicts if None)."""
    if not isinstance(agg, Aggregator):
        raise ConfigError("custom aggregation: pass an instance of sl.agg.Aggregator")
    return _Custom(agg, column, dtype)


def bind_all(aggs: dict[str, Agg]) -> list[BoundAgg]:
    """Bind named aggregations to internal partial column names."""
    out = []
    for i, (name, a) in enumerate(aggs.items()):
        if not isinstance(a, Agg):
            raise ConfigError(
                f"aggregation {name!r}: expected an sl.agg.* aggregation, got {type(a).__name__}"
            )
        bound = a.bind(name, f"__p{i}")
        column = getattr(a, "column", None)
        if column is not None:
            bound.inputs = [column]
        elif not isinstance(a, _Custom):  # a count of rows; a custom one reads them all
            bound.inputs = []
        out.append(bound)
    return out
