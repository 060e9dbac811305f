"""Stress: large out-of-order streams through every time-window kind at
parallelism 1 and 4, checked against Polars on the whole input.

Marked slow; CI runs a bounded sample (SLUICE_SLOW_SAMPLE=1 shrinks the input).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import sluice as sl
from tests.helpers import run_collect, same_rows


def _events(n: int, seed: int = 11) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ts = np.arange(n) // 10 + rng.integers(-400, 1, n)  # out of order by up to 400 ms
    return pl.DataFrame({"key": rng.integers(0, 500, n), "v": rng.integers(0, 100, n), "ts": ts})


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", [1, 4])
@pytest.mark.parametrize("kind", ["tumbling", "sliding"])
def test_large_windowed_sums_match_polars(kind, parallelism, slow_sample):
    n = 200_000 if slow_sample else 3_000_000
    df = _events(n)
    spec = sl.windows.tumbling("1s") if kind == "tumbling" else sl.windows.sliding("2s", "500ms")
    got = run_collect(
        lambda f: (
            f.source(sl.sources.memory(df, batch_size=50_000), time="ts", watermark="500ms")
            .key_by("key")
            .window(spec)
            .agg(n=sl.agg.count(), s=sl.agg.sum("v"))
        ),
        parallelism=parallelism,
    )
    if kind == "tumbling":
        want = df.group_by("key", ws=pl.col("ts") // 1000 * 1000).agg(
            n=pl.len(), s=pl.col("v").sum()
        )
        want = want.with_columns(we=pl.col("ws") + 1000)
    else:
        parts = [df.with_columns(ws=pl.col("ts") - pl.col("ts") % 500 - k * 500) for k in range(4)]
        want = (
            pl.concat(parts)
            .filter(pl.col("ws") > pl.col("ts") - 2000)
            .group_by("key", "ws")
            .agg(n=pl.len(), s=pl.col("v").sum())
            .with_columns(we=pl.col("ws") + 2000)
        )
    want = want.select(
        "key",
        window_start=pl.col("ws").cast(pl.Datetime("ms")),
        window_end=pl.col("we").cast(pl.Datetime("ms")),
        n=pl.col("n").cast(pl.Int64),
        s="s",
    )
    assert same_rows(got, want)
