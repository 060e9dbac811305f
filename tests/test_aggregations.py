"""Window aggregations, each checked against a plain Polars computation.

The input is a seeded random stream, out of order within the watermark bound
(so nothing is late), cut into small batches over two subtasks so that every
aggregation goes through its partial -> merge -> final path many times.
"""

from __future__ import annotations

import math
import random
from typing import Any

import polars as pl
import pytest

import sluice as sl

SIZE = 1000  # tumbling window size (ms)


def _stream(seed: int = 3, n: int = 1200) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = []
    base = 0
    for i in range(n):
        base += rng.randint(0, 20)
        rows.append(
            {
                "user": rng.choice("abcd"),
                "ts": base - rng.randint(0, 900),
                "v": None if rng.random() < 0.1 else rng.randint(-50, 50),
                "x": rng.lognormvariate(0, 2) * rng.choice([-1, 1, 1, 1]),
                "tag": rng.choice(["p", "q", "r", None]),
                "seq": i,
            }
        )
    return pl.DataFrame(rows)


STREAM = _stream()


def windowed(
    aggs: dict[str, Any],
    *,
    data: pl.DataFrame = STREAM,
    window: Any = None,
    batch_size: int = 9,
    parallelism: int = 2,
) -> pl.DataFrame:
    """Run ``aggs`` over tumbling windows of SIZE; rows sorted by user, window_start."""
    flow = sl.Flow("aggs", parallelism=parallelism)
    out, late = sl.sinks.collect(), sl.sinks.collect()
    res = (
        flow.source(sl.sources.memory(data, batch_size=batch_size), time="ts", watermark="1s")
        .key_by("user")
        .window(window or sl.windows.tumbling(SIZE))
        .agg(**aggs)
    )
    res.sink(out)
    res.late().sink(late)
    flow.run()
    assert late.to_polars().height == 0
    return (
        out.to_polars()
        .with_columns(pl.col("window_start").dt.epoch("ms"))
        .drop("window_end")
        .sort("user", "window_start")
    )


def reference(**exprs: pl.Expr) -> pl.DataFrame:
    """The same aggregation in batch with Polars (rows kept in input order)."""
    return (
        STREAM.with_columns(window_start=pl.col("ts") - pl.col("ts") % SIZE)
        .group_by("user", "window_start", maintain_order=True)
        .agg(**exprs)
        .sort("user", "window_start")
    )


def assert_same(got: pl.DataFrame, ref: pl.DataFrame, *, check_dtypes: bool = False) -> None:
    from polars.testing import assert_frame_equal

    assert ref.height > 20
    assert_frame_equal(got, ref.select(got.columns), check_dtypes=check_dtypes, abs_tol=1e-9)


def test_count_rows_and_non_null_values():
    got = windowed({"n": sl.agg.count(), "nv": sl.agg.count("v")})
    assert got.schema["n"] == pl.Int64
    assert_same(got, reference(n=pl.len(), nv=pl.col("v").count()))


def test_sum_min_max():
    got = windowed({"s": sl.agg.sum("v"), "mn": sl.agg.min("v"), "mx": sl.agg.max("v")})
    assert_same(got, reference(s=pl.col("v").sum(), mn=pl.col("v").min(), mx=pl.col("v").max()))


def test_sum_of_floats():
    got = windowed({"s": sl.agg.sum("x")})
    ref = reference(s=pl.col("x").sum())
    assert got["s"].to_list() == pytest.approx(ref["s"].to_list(), rel=1e-9)


def test_min_max_of_strings_ignore_nulls():
    got = windowed({"mn": sl.agg.min("tag"), "mx": sl.agg.max("tag")})
    assert_same(got, reference(mn=pl.col("tag").min(), mx=pl.col("tag").max()))


def test_mean_ignores_nulls():
    got = windowed({"m": sl.agg.mean("v")})
    assert got.schema["m"] == pl.Float64
    assert_same(got, reference(m=pl.col("v").mean()))


def test_mean_of_an_all_null_window_is_null():
    data = pl.DataFrame(
        {"user": ["a", "a", "b"], "ts": [1, 2, 3], "v": [None, None, 4]},
        schema={"user": pl.String, "ts": pl.Int64, "v": pl.Int64},
    )
    got = windowed({"m": sl.agg.mean("v"), "n": sl.agg.count("v")}, data=data)
    assert got.select("user", "m", "n").rows() == [("a", None, 0), ("b", 4.0, 1)]


def test_first_and_last_are_by_event_time_not_arrival():
    got = windowed({"f": sl.agg.first("seq"), "l": sl.agg.last("seq")})
    assert_same(
        got,
        reference(
            f=pl.col("seq").sort_by("ts", maintain_order=True).first(),
            l=pl.col("seq").sort_by("ts", maintain_order=True).last(),
        ),
    )


@pytest.mark.parametrize("times", [[100, 900], [900, 100], [100, 900, 500], [500, 100, 900]])
def test_first_and_last_over_rows_from_different_batches(times):
    # one row per batch: the window merges one-row partials
    data = pl.DataFrame({"user": "a", "ts": times, "v": times})
    got = windowed(
        {"f": sl.agg.first("v"), "l": sl.agg.last("v")}, data=data, batch_size=1, parallelism=1
    )
    assert got.select("f", "l").rows() == [(min(times), max(times))]


def test_first_and_last_break_ties_by_arrival():
    # equal event times: first keeps the earliest arrival, last the latest
    data = pl.DataFrame(
        {"user": ["a"] * 6, "ts": [500, 100, 100, 900, 900, 300], "v": [1, 2, 3, 4, 5, 6]}
    )
    for batch_size in (1, 2, 6):
        got = windowed(
            {"f": sl.agg.first("v"), "l": sl.agg.last("v")},
            data=data,
            batch_size=batch_size,
            parallelism=1,
        )
        assert got.select("f", "l").rows() == [(2, 5)], batch_size


def test_count_distinct_ignores_nulls():
    got = windowed({"d": sl.agg.count_distinct("tag"), "dv": sl.agg.count_distinct("v")})
    assert_same(
        got,
        reference(d=pl.col("tag").drop_nulls().n_unique(), dv=pl.col("v").drop_nulls().n_unique()),
    )


def test_collect_list_keeps_arrival_order():
    # parallelism 1: the arrival order at the window is the input order
    got = windowed({"seqs": sl.agg.collect_list("seq")}, parallelism=1)
    assert_same(got, reference(seqs=pl.col("seq")))


@pytest.mark.parametrize("q", [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0])
def test_quantile_is_within_one_percent_relative_error(q):
    got = windowed({"qx": sl.agg.quantile("x", q)})
    # DDSketch returns a value within 1% of the value of rank floor(q * (n - 1))
    ref = reference(qx=pl.col("x").quantile(q, interpolation="lower"))
    assert got.select("user", "window_start").equals(ref.select("user", "window_start"))
    for est, exact in zip(got["qx"], ref["qx"], strict=True):
        assert abs(est - exact) <= 0.01 * abs(exact) + 1e-12, (q, est, exact)


def test_quantile_with_zeros_nulls_and_a_coarser_accuracy():
    data = pl.DataFrame(
        {
            "user": ["a"] * 8,
            "ts": list(range(8)),
            "x": [0.0, 0.0, None, 10.0, 20.0, -5.0, 1000.0, 0.0],
        }
    )
    got = windowed(
        {
            "median": sl.agg.quantile("x", 0.5),
            "top": sl.agg.quantile("x", 1.0, relative_accuracy=0.05),
            "bottom": sl.agg.quantile("x", 0.0),
        },
        data=data,
        batch_size=3,
    )
    (row,) = got.rows(named=True)
    # non-null values sorted: -5, 0, 0, 0, 10, 20, 1000; rank floor(0.5 * 6) = 3 -> 0
    assert row["median"] == 0.0
    assert abs(row["top"] - 1000.0) <= 0.05 * 1000.0
    assert abs(row["bottom"] - -5.0) <= 0.01 * 5.0


def test_quantile_rejects_bad_arguments():
    with pytest.raises(sl.ConfigError):
        sl.agg.quantile("x", 1.5)
    with pytest.raises(sl.ConfigError):
        sl.agg.quantile("x", 0.5, relative_accuracy=0.0)


class Range(sl.agg.Aggregator):
    """max - min of the values (None for an empty window)."""

    def create(self):
        return None

    def add(self, acc, v):
        if v is None:
            return acc
        return (v, v) if acc is None else (min(acc[0], v), max(acc[1], v))

    def merge(self, a, b):
        if a is None or b is None:
            return a if b is None else b
        return (min(a[0], b[0]), max(a[1], b[1]))

    def result(self, acc):
        return None if acc is None else acc[1] - acc[0]


class WeightedSum(sl.agg.Aggregator):
    """Over whole rows (dicts): sum of v * seq."""

    def create(self):
        return 0

    def add(self, acc, row):
        return acc + (row["v"] or 0) * row["seq"]

    def merge(self, a, b):
        return a + b

    def result(self, acc):
        return acc


def test_custom_aggregator_over_a_column():
    got = windowed({"range": sl.agg.custom(Range(), "v")})
    assert_same(got, reference(range=pl.col("v").max() - pl.col("v").min()))


def test_custom_aggregator_over_whole_rows():
    got = windowed({"ws": sl.agg.custom(WeightedSum())})
    assert_same(got, reference(ws=(pl.col("v").fill_null(0) * pl.col("seq")).sum()))


def test_custom_aggregator_with_declared_dtype_merges_in_sessions():
    data = pl.DataFrame(
        {"user": ["a"] * 5, "ts": [0, 3000, 1500, 4000, 9000], "v": [5, 1, 3, 7, 2]}
    )
    got = windowed(
        {"range": sl.agg.custom(Range(), "v", dtype=pl.Float64)},
        data=data,
        window=sl.windows.session(1500),
        batch_size=1,
    )
    assert got.schema["range"] == pl.Float64
    assert got.select("window_start", "range").rows() == [(0, 6.0), (9000, 0.0)]


def test_custom_aggregation_must_be_an_aggregator():
    with pytest.raises(sl.ConfigError):
        sl.agg.custom(lambda xs: sum(xs), "v")  # type: ignore[arg-type]


def test_many_aggregations_in_one_window_in_sliding_windows():
    got = windowed(
        {
            "n": sl.agg.count(),
            "s": sl.agg.sum("v"),
            "m": sl.agg.mean("v"),
            "d": sl.agg.count_distinct("tag"),
        },
        window=sl.windows.sliding(SIZE, SIZE // 2),
    )
    per_half = STREAM.with_columns(half=pl.col("ts") - pl.col("ts") % (SIZE // 2))
    ref = (
        pl.concat(
            [
                per_half.with_columns(window_start=pl.col("half")),
                per_half.with_columns(window_start=pl.col("half") - SIZE // 2),
            ]
        )
        .group_by("user", "window_start")
        .agg(
            n=pl.len(),
            s=pl.col("v").sum(),
            m=pl.col("v").mean(),
            d=pl.col("tag").drop_nulls().n_unique(),
        )
        .sort("user", "window_start")
    )
    assert_same(got, ref)


def test_aggregation_output_name_cannot_collide_with_window_columns():
    flow = sl.Flow("bad")
    ws = (
        flow.source([{"user": "a", "ts": 1}], time="ts")
        .key_by("user")
        .window(sl.windows.tumbling("1s"))
    )
    with pytest.raises(sl.ConfigError):
        ws.agg(window_start=sl.agg.count())
    with pytest.raises(sl.ConfigError):
        ws.agg(user=sl.agg.count())
    with pytest.raises(sl.ConfigError):
        ws.agg()


def test_reference_stream_is_really_out_of_order():
    # the fixture is meaningful: many rows arrive behind the maximum seen so far
    behind = (STREAM["ts"] < STREAM["ts"].cum_max().shift(1)).sum()
    assert behind > len(STREAM) // 3
    assert math.isfinite(STREAM["x"].sum())
