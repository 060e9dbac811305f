"""Count windows (Flink ``countWindow(n)`` and ``countWindow(n, slide)``).

Tumbling ``count(n)`` fires and clears after every ``n`` rows of a key.
Sliding ``count(n, slide)`` fires every ``slide`` rows of a key over the last
``n`` rows (the first firings have fewer rows). Incomplete windows never fire,
not even at end of input. Rows are counted in arrival order per key.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

import sluice as sl


def run_count(
    rows: list[dict[str, Any]],
    window: Any,
    *,
    batch_size: int = 1,
    parallelism: int = 1,
    keys: tuple[str, ...] = ("user",),
    time: str | None = "ts",
    aggs: dict[str, Any] | None = None,
) -> pl.DataFrame:
    flow = sl.Flow("count", parallelism=parallelism)
    out = sl.sinks.collect()
    stream = flow.source(sl.sources.memory(rows, batch_size=batch_size), time=time)
    (stream.key_by(*keys) if keys else stream).window(window).agg(
        **(aggs or {"n": sl.agg.count(), "vals": sl.agg.collect_list("v")})
    ).sink(out)
    flow.run()
    return out.to_polars()


def ev(user: str, v: int, ts: int | None = None) -> dict[str, Any]:
    return {"user": user, "ts": v if ts is None else ts, "v": v}


def fired(df: pl.DataFrame, user: str | None = None) -> list[list[int]]:
    """The rows of each firing (of one key), in firing order; rows within a firing
    sorted (their order is tested once, by ``test_collect_list_*``)."""
    if df.height == 0:
        return []
    if user is not None:
        df = df.filter(pl.col("user") == user)
    return [sorted(vals) for vals in df["vals"].to_list()]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
def test_tumbling_count_window_fires_every_n_rows_and_drops_the_incomplete_rest(batch_size):
    rows = [ev("a", v) for v in range(1, 8)]
    got = run_count(rows, sl.windows.count(3), batch_size=batch_size)
    assert got.select("user", "n").rows() == [("a", 3), ("a", 3)]
    assert fired(got) == [[1, 2, 3], [4, 5, 6]]


def test_tumbling_count_windows_are_per_key():
    rows = [ev("a", 1), ev("b", 10), ev("a", 2), ev("b", 20), ev("b", 30), ev("a", 3), ev("a", 4)]
    got = run_count(rows, sl.windows.count(2), batch_size=2)
    assert fired(got, "a") == [[1, 2], [3, 4]]
    assert fired(got, "b") == [[10, 20]]


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_sliding_count_window_fires_every_slide_rows_over_the_last_n(batch_size):
    rows = [ev("a", v) for v in range(1, 10)]
    got = run_count(rows, sl.windows.count(4, 2), batch_size=batch_size)
    # fires after rows 2, 4, 6, 8; the first firing has only 2 rows; row 9 never fires
    assert fired(got) == [[1, 2], [1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8]]
    assert got["n"].to_list() == [2, 4, 4, 4]


def test_sliding_count_window_when_slide_does_not_divide_size():
    rows = [ev("a", v) for v in range(1, 9)]
    got = run_count(rows, sl.windows.count(5, 2), batch_size=3)
    assert fired(got) == [[1, 2], [1, 2, 3, 4], [2, 3, 4, 5, 6], [4, 5, 6, 7, 8]]


def test_sliding_count_window_with_slide_larger_than_size():
    rows = [ev("a", v) for v in range(1, 11)]
    got = run_count(rows, sl.windows.count(3, 5), batch_size=4)
    # every 5 rows, the last 3 rows, in arrival order
    assert fired(got) == [[3, 4, 5], [8, 9, 10]]


def test_sliding_count_windows_are_per_key_across_batches():
    rows = []
    for i in range(1, 7):
        rows += [ev("a", i), ev("b", 100 + i)]
    got = run_count(rows, sl.windows.count(3, 1), batch_size=5, parallelism=2)
    assert fired(got, "a") == [[1], [1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6]]
    assert fired(got, "b") == [
        [101],
        [101, 102],
        [101, 102, 103],
        [102, 103, 104],
        [103, 104, 105],
        [104, 105, 106],
    ]


@pytest.mark.parametrize(
    "window", [sl.windows.count(4), sl.windows.count(4, 2), sl.windows.count(5, 2)]
)
def test_collect_list_in_count_windows_keeps_arrival_order(window):
    # arrival order 8, 7, ..., 1: every firing lists its rows in that order
    rows = [ev("a", v) for v in range(8, 0, -1)]
    got = run_count(rows, window, batch_size=3)
    assert got.height >= 2
    for vals in got["vals"].to_list():
        assert vals == sorted(vals, reverse=True)


def test_count_windows_follow_arrival_order_not_event_time():
    rows = [ev("a", 1, ts=500), ev("a", 2, ts=100), ev("a", 3, ts=300), ev("a", 4, ts=0)]
    got = run_count(rows, sl.windows.count(2))
    assert fired(got) == [[1, 2], [3, 4]]


def test_count_window_aggregates_against_polars():
    rows = [
        {"user": "abc"[i % 3], "ts": (i * 7919) % 1000, "v": (i * 31) % 17 - 8} for i in range(60)
    ]
    aggs = {
        "n": sl.agg.count(),
        "s": sl.agg.sum("v"),
        "mn": sl.agg.min("v"),
        "mx": sl.agg.max("v"),
        "first": sl.agg.first("v"),
        "last": sl.agg.last("v"),
    }
    got = run_count(rows, sl.windows.count(4), batch_size=7, aggs=aggs)
    ref = (
        pl.DataFrame(rows)
        .with_columns(idx=pl.int_range(pl.len()).over("user") // 4)
        .filter(pl.len().over("user", "idx") == 4)
        .group_by("user", "idx", maintain_order=True)
        .agg(
            n=pl.len().cast(pl.Int64),
            s=pl.col("v").sum(),
            mn=pl.col("v").min(),
            mx=pl.col("v").max(),
            first=pl.col("v").sort_by("ts", maintain_order=True).first(),
            last=pl.col("v").sort_by("ts", maintain_order=True).last(),
        )
        .drop("idx")
    )
    assert sorted(got.select(ref.columns).rows()) == sorted(ref.rows())


def test_count_windows_without_keys():
    rows = [ev("abc"[v % 3], v) for v in range(1, 8)]
    got = run_count(rows, sl.windows.count(3), keys=(), parallelism=2, batch_size=2)
    assert sorted(got["n"].to_list()) == [3, 3]
    assert sorted(v for vals in fired(got) for v in vals) == [1, 2, 3, 4, 5, 6]


def test_count_windows_on_a_stream_without_event_time():
    rows = [{"user": "a", "v": v} for v in range(1, 6)]
    got = run_count(rows, sl.windows.count(2), time=None)
    assert fired(got) == [[1, 2], [3, 4]]


def test_count_window_size_must_be_positive():
    with pytest.raises(sl.ConfigError):
        sl.windows.count(0)
    with pytest.raises(sl.ConfigError):
        sl.windows.count(3, 0)
