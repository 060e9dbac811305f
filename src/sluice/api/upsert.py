"""Reading upsert streams: the table an upsert stream describes.

An upsert stream (the output of ``top_n`` or of a running ``agg``) is a
changelog in which a row replaces the earlier row with the same upsert key,
as in Flink's upsert mode or a compacted Kafka topic. :func:`materialize`
applies such a changelog and returns the current table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from sluice.errors import ConfigError


def materialize(rows: Any, key: str | Sequence[str]) -> pl.DataFrame:
    """The current table of an upsert stream: for every value of ``key``, the
    last row to arrive with it (rows in arrival order; the result keeps the
    order of those last rows).

    ``rows``: a DataFrame, a list of dicts, or anything with ``to_polars()``
    (such as ``sl.sinks.collect()``). ``key``: the stream's upsert key
    (``stream.upsert_key``), a column name or a list of names. Null key
    values are a key like any other.

    >>> import sluice as sl, polars as pl
    >>> log = pl.DataFrame({"k": ["a", "b", "a"], "v": [1, 2, 3]})
    >>> sl.materialize(log, "k").rows()
    [('b', 2), ('a', 3)]
    """
    if hasattr(rows, "to_polars") and not isinstance(rows, pl.DataFrame):
        df = rows.to_polars()
    elif isinstance(rows, pl.DataFrame):
        df = rows
    elif isinstance(rows, Iterable) and not isinstance(rows, str | bytes | dict):
        df = pl.DataFrame(list(rows))
    else:
        raise ConfigError(
            "materialize: rows must be a Polars DataFrame, a list of dicts or a collect "
            f"sink, got {type(rows).__name__}"
        )
    cols = [key] if isinstance(key, str) else list(key) if isinstance(key, Sequence) else None
    if not cols or not all(isinstance(c, str) for c in cols):
        raise ConfigError(
            f"materialize: key must be a column name or a non-empty list of names, got {key!r}"
        )
    if df.height == 0 and not df.columns:
        return df
    for c in cols:
        if c not in df.columns:
            raise ConfigError(
                f"materialize: the rows have no key column {c!r} (their columns: {df.columns}); "
                "pass the stream's upsert_key"
            )
    return df.unique(cols, keep="last", maintain_order=True)
