"""Aggregations for windows: ``sl.agg.count()``, ``sl.agg.sum("amount")``, ..."""

from sluice.operators.aggregations import (
    Agg,
    Aggregator,
    collect_list,
    count,
    count_distinct,
    custom,
    first,
    last,
    max,
    mean,
    min,
    quantile,
    sum,
)

__all__ = [
    "Agg",
    "Aggregator",
    "collect_list",
    "count",
    "count_distinct",
    "custom",
    "first",
    "last",
    "max",
    "mean",
    "min",
    "quantile",
    "sum",
]
