"""Test data for the connector tests: a deterministic event table and file writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

import sluice as sl


def events(n: int, *, seed: int = 0, start_ms: int = 1_700_000_000_000) -> pl.DataFrame:
    """``n`` click events: id (row number), user (str), n (int), price (float),
    ok (bool), ts (ISO string, ascending)."""
    rng = np.random.default_rng(seed)
    ms = start_ms + np.sort(rng.integers(0, 3_600_000, n))
    return pl.DataFrame(
        {
            "id": np.arange(n),
            "user": [f"u{k}" for k in rng.integers(0, 50, n)],
            "n": rng.integers(-1000, 1000, n),
            "price": rng.integers(0, 100_000, n) / 100,
            "ok": rng.integers(0, 2, n).astype(bool),
            "ts": pl.Series(ms).cast(pl.Datetime("ms")),
        }
    ).with_columns(pl.col("ts").dt.to_string("%Y-%m-%dT%H:%M:%S%.3f"))


def write_parts(df: pl.DataFrame, directory: Path, fmt: str, parts: int) -> list[Path]:
    """Write ``df`` as ``parts`` files ``part-<i>.<fmt>`` of about equal size."""
    directory.mkdir(parents=True, exist_ok=True)
    size = -(-df.height // parts)
    paths = []
    for i in range(parts):
        chunk = df.slice(i * size, size)
        path = directory / f"part-{i}.{fmt}"
        if fmt == "jsonl":
            chunk.write_ndjson(path)
        elif fmt == "csv":
            chunk.write_csv(path)
        else:
            chunk.write_parquet(path, row_group_size=97)
        paths.append(path)
    return paths


def run_to(
    source: sl.sources.FileSource | sl.sources.GeneratorSource,
    *,
    parallelism: int = 1,
    max_batch_rows: int = 65_536,
    **source_kwargs: object,
) -> pl.DataFrame:
    """Run ``source`` into a collect sink and return the rows."""
    flow = sl.Flow("t", parallelism=parallelism, max_batch_rows=max_batch_rows)
    out = sl.sinks.collect()
    flow.source(source, **source_kwargs).sink(out)  # type: ignore[arg-type]
    flow.run()
    return out.to_polars()
