"""Tumbling, sliding and global windows (docs/event-time.md, Flink semantics).

Every test is a specification: given rows written inline (usually one row per
batch, so the watermark moves between rows exactly as written), when the job
runs, then exactly these window results and late rows come out. Window bounds
are compared as epoch milliseconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice.connectors.base import ReadBatch, Source, SplitReader
from sluice.operators.windows import WindowOperator
from sluice.runtime.local import LocalRuntime


@dataclass
class Run:
    out: pl.DataFrame  # window results, window_start/window_end as epoch ms
    late: pl.DataFrame  # the late side output
    late_dropped: int  # result.metrics["window"].late_dropped


def run_window(
    rows: list[dict[str, Any]] | pl.DataFrame,
    window: Any,
    *,
    watermark: Any = 0,
    allowed_lateness: Any = 0,
    trigger: Any = None,
    batch_size: int = 1,
    parallelism: int = 1,
    keys: tuple[str, ...] = ("user",),
    aggs: dict[str, Any] | None = None,
) -> Run:
    flow = sl.Flow("windows", parallelism=parallelism)
    out, late = sl.sinks.collect(), sl.sinks.collect()
    stream = flow.source(
        sl.sources.memory(rows, batch_size=batch_size),
        time="ts",
        watermark=sl.bounded_out_of_orderness(watermark),
    )
    windowed = (stream.key_by(*keys) if keys else stream).window(
        window, allowed_lateness=allowed_lateness, trigger=trigger
    )
    res = windowed.agg(**(aggs or {"n": sl.agg.count(), "total": sl.agg.sum("amount")}))
    res.sink(out)
    res.late().sink(late)
    job = flow.run()
    got = out.to_polars()
    if "window_start" in got.columns:
        got = got.with_columns(pl.col("window_start", "window_end").dt.epoch("ms"))
    return Run(got, late.to_polars(), job.metrics["window"].late_dropped)


def ev(user: str, ts: int, amount: int = 1) -> dict[str, Any]:
    return {"user": user, "ts": ts, "amount": amount}


def rows_of(df: pl.DataFrame, *cols: str) -> list[tuple[Any, ...]]:
    """The given columns as sorted tuples (a multiset comparison)."""
    if df.height == 0:
        return []
    return sorted(df.select(cols).rows())


def seq_of(df: pl.DataFrame, *cols: str) -> list[tuple[Any, ...]]:
    """The given columns as tuples in arrival order at the sink."""
    if df.height == 0:
        return []
    return df.select(cols).rows()


W = ("user", "window_start", "window_end")


# -- results: columns and types -----------------------------------------------------------
def test_results_carry_keys_window_bounds_as_datetime_ms_and_aggregates():
    flow = sl.Flow("schema")
    out = sl.sinks.collect()
    flow.source([ev("a", 1500, 7)], time="ts").key_by("user").window(sl.windows.tumbling("1s")).agg(
        n=sl.agg.count(), total=sl.agg.sum("amount")
    ).sink(out)
    flow.run()
    got = out.to_polars()
    assert got.columns == ["user", "window_start", "window_end", "n", "total"]
    assert got.schema["window_start"] == pl.Datetime("ms")
    assert got.schema["window_end"] == pl.Datetime("ms")
    assert got.rows() == [("a", datetime(1970, 1, 1, 0, 0, 1), datetime(1970, 1, 1, 0, 0, 2), 1, 7)]


# -- tumbling assignment --------------------------------------------------------------------
def test_tumbling_windows_are_half_open_and_per_key():
    rows = [ev("a", 0, 1), ev("a", 999, 2), ev("a", 1000, 3), ev("b", 1000, 10)]
    rows += [ev("a", 1999, 4), ev("a", 2500, 5)]
    got = run_window(rows, sl.windows.tumbling("1s"))
    assert rows_of(got.out, *W, "n", "total") == [
        ("a", 0, 1000, 2, 3),
        ("a", 1000, 2000, 2, 7),
        ("a", 2000, 3000, 1, 5),
        ("b", 1000, 2000, 1, 10),
    ]
    assert got.late.height == 0 and got.late_dropped == 0


def test_tumbling_window_with_offset():
    # start(t) = t - (t - 300 + 1000) mod 1000
    rows = [ev("a", 299), ev("a", 300), ev("a", 1299), ev("a", 1300)]
    got = run_window(rows, sl.windows.tumbling("1s", offset="300ms"))
    assert rows_of(got.out, *W, "n") == [
        ("a", -700, 300, 1),
        ("a", 300, 1300, 2),
        ("a", 1300, 2300, 1),
    ]


def test_tumbling_windows_for_negative_times_use_a_true_modulo():
    rows = [ev("a", -1001), ev("a", -1000), ev("a", -1), ev("a", 0)]
    got = run_window(rows, sl.windows.tumbling("1s"))
    assert rows_of(got.out, *W, "n") == [
        ("a", -2000, -1000, 1),
        ("a", -1000, 0, 2),
        ("a", 0, 1000, 1),
    ]


def test_tumbling_windows_for_negative_times_with_offset():
    rows = [ev("a", -1701), ev("a", -1700), ev("a", -701), ev("a", -700)]
    got = run_window(rows, sl.windows.tumbling("1s", offset="300ms"))
    assert rows_of(got.out, *W, "n") == [
        ("a", -2700, -1700, 1),
        ("a", -1700, -700, 2),
        ("a", -700, 300, 1),
    ]


def test_tumbling_windows_over_a_datetime_column_before_the_epoch():
    rows = [
        {"user": "a", "ts": datetime(1969, 12, 31, 23, 59, 59, 500_000), "amount": 1},
        {"user": "a", "ts": datetime(1970, 1, 1, 0, 0, 0, 0), "amount": 2},
    ]
    got = run_window(rows, sl.windows.tumbling("1s"))
    assert rows_of(got.out, *W, "total") == [("a", -1000, 0, 1), ("a", 0, 1000, 2)]


def test_windows_over_the_whole_stream_without_keys():
    rows = [ev("a", 100, 1), ev("b", 200, 2), ev("c", 1100, 3), ev("a", 1200, 4)]
    got = run_window(rows, sl.windows.tumbling("1s"), keys=(), parallelism=2)
    assert rows_of(got.out, "window_start", "window_end", "n", "total") == [
        (0, 1000, 2, 3),
        (1000, 2000, 2, 7),
    ]


# -- sliding assignment ----------------------------------------------------------------------
def test_sliding_windows_put_each_event_in_size_over_slide_windows():
    rows = [ev("a", 500, 1), ev("a", 1500, 10), ev("a", 2500, 100)]
    got = run_window(rows, sl.windows.sliding("3s", "1s"))
    assert rows_of(got.out, *W, "n", "total") == [
        ("a", -2000, 1000, 1, 1),
        ("a", -1000, 2000, 2, 11),
        ("a", 0, 3000, 3, 111),
        ("a", 1000, 4000, 2, 110),
        ("a", 2000, 5000, 1, 100),
    ]
    assert got.out["n"].sum() == 3 * 3


def test_sliding_window_boundaries_are_half_open():
    # t = 1000 is in [1000, 3000) and [0, 2000) but not in [-1000, 1000)
    got = run_window([ev("a", 1000)], sl.windows.sliding("2s", "1s"))
    assert rows_of(got.out, *W) == [("a", 0, 2000), ("a", 1000, 3000)]


def test_sliding_windows_when_slide_does_not_divide_size():
    # every w = last, last - slide, ... while w > t - size
    # t=999: w in {0, -1000};  t=1000: w in {1000, 0, -1000}
    rows = [ev("a", 999, 1), ev("a", 1000, 10)]
    got = run_window(rows, sl.windows.sliding(2500, 1000))
    assert rows_of(got.out, *W, "total") == [
        ("a", -1000, 1500, 11),
        ("a", 0, 2500, 11),
        ("a", 1000, 3500, 10),
    ]


def test_sliding_windows_with_offset_and_negative_times():
    # start(t, 1000) with offset 250: t=249 -> -750, t=250 -> 250, t=-751 -> -1750
    rows = [ev("a", -751, 1), ev("a", 249, 10), ev("a", 250, 100)]
    got = run_window(rows, sl.windows.sliding("2s", "1s", offset="250ms"))
    assert rows_of(got.out, *W, "total") == [
        ("a", -2750, -750, 1),
        ("a", -1750, 250, 11),
        ("a", -750, 1250, 110),
        ("a", 250, 2250, 100),
    ]


# -- out-of-order and late data --------------------------------------------------------------
def test_out_of_order_rows_within_the_bound_are_all_counted():
    # watermark = max seen - 2000 - 1; no row is ever behind it
    ts = [1500, 200, 2900, 900, 3100, 1999, 2100]
    got = run_window([ev("a", t) for t in ts], sl.windows.tumbling("1s"), watermark="2s")
    assert rows_of(got.out, *W, "n") == [
        ("a", 0, 1000, 2),
        ("a", 1000, 2000, 2),
        ("a", 2000, 3000, 2),
        ("a", 3000, 4000, 1),
    ]
    assert got.late.height == 0 and got.late_dropped == 0


def test_rows_for_closed_windows_go_to_the_late_output_and_are_counted():
    rows = [
        ev("a", 100, 1),
        ev("a", 1500, 2),  # watermark 1499: [0, 1000) fires
        ev("a", 200, 3),  # late
        ev("b", 300, 4),  # late as well: watermarks are per operator, not per key
        ev("a", 2500, 5),  # watermark 2499: [1000, 2000) fires
        ev("a", 1999, 6),  # late: 1999 <= 2499
        ev("a", 2600, 7),
    ]
    got = run_window(rows, sl.windows.tumbling("1s"))
    assert rows_of(got.out, *W, "n", "total") == [
        ("a", 0, 1000, 1, 1),
        ("a", 1000, 2000, 1, 2),
        ("a", 2000, 3000, 2, 12),
    ]
    assert got.late.columns == ["user", "ts", "amount"]
    assert rows_of(got.late, "user", "ts", "amount") == [
        ("a", 200, 3),
        ("a", 1999, 6),
        ("b", 300, 4),
    ]
    assert got.late_dropped == 3


def test_late_rows_are_counted_even_without_a_late_output():
    flow = sl.Flow("no-late-sink")
    out = sl.sinks.collect()
    rows = [ev("a", 100), ev("a", 1500), ev("a", 200)]
    flow.source(sl.sources.memory(rows, batch_size=1), time="ts").key_by("user").window(
        sl.windows.tumbling("1s")
    ).agg(n=sl.agg.count()).sink(out)
    job = flow.run()
    assert job.metrics["window"].late_dropped == 1
    assert job.metric("window", "late_dropped") == 1


def test_late_but_allowed_rows_update_and_refire_the_same_window():
    rows = [
        ev("a", 100, 1),
        ev("a", 1200, 2),  # watermark 1199: [0, 1000) fires with 1
        ev("a", 300, 3),  # late, within 1 s: fires again with 1 + 3
        ev("a", 1600, 4),
        ev("a", 400, 5),  # fires again with 1 + 3 + 5
        ev("a", 2600, 6),  # watermark 2599 >= 999 + 1000: state of [0, 1000) is dropped
        ev("a", 500, 7),  # too late
    ]
    got = run_window(rows, sl.windows.tumbling("1s"), allowed_lateness="1s")
    first_window = got.out.filter(pl.col("window_start") == 0)
    assert seq_of(first_window, *W, "n", "total") == [
        ("a", 0, 1000, 1, 1),
        ("a", 0, 1000, 2, 4),
        ("a", 0, 1000, 3, 9),
    ]
    assert rows_of(got.out.filter(pl.col("window_start") > 0), *W, "n", "total") == [
        ("a", 1000, 2000, 2, 6),
        ("a", 2000, 3000, 1, 6),
    ]
    assert rows_of(got.late, "user", "ts", "amount") == [("a", 500, 7)]
    assert got.late_dropped == 1


def test_allowed_lateness_boundary_is_end_minus_one_plus_lateness():
    # [0, 1000) with lateness 500 keeps its state while the watermark is < 1499
    rows = [
        ev("a", 100, 1),
        ev("a", 1499, 2),  # watermark 1498: fires [0, 1000)
        ev("a", 200, 3),  # 999 + 500 > 1498: accepted, fires again
        ev("a", 1500, 4),  # watermark 1499: state of [0, 1000) dropped
        ev("a", 300, 5),  # 999 + 500 <= 1499: late
    ]
    got = run_window(rows, sl.windows.tumbling("1s"), allowed_lateness="500ms")
    assert seq_of(got.out, *W, "n", "total") == [
        ("a", 0, 1000, 1, 1),
        ("a", 0, 1000, 2, 4),
        ("a", 1000, 2000, 2, 6),
    ]
    assert rows_of(got.late, "ts") == [(300,)]
    assert got.late_dropped == 1


def test_late_rows_in_a_batch_with_on_time_rows_are_split_exactly():
    rows = [ev("a", 100, 1), ev("a", 1500, 2), ev("a", 200, 3), ev("a", 1600, 4)]
    # batches: [100, 1500] then [200, 1600]; after the first batch the watermark is 1499
    got = run_window(rows, sl.windows.tumbling("1s"), batch_size=2)
    assert rows_of(got.out, *W, "n", "total") == [("a", 0, 1000, 1, 1), ("a", 1000, 2000, 2, 6)]
    assert rows_of(got.late, "ts") == [(200,)]
    assert got.late_dropped == 1


def test_sliding_row_late_for_some_windows_counts_in_the_others_and_is_not_late():
    rows = [
        ev("a", 500, 1),
        ev("a", 2000, 10),  # watermark 1999: [-1000, 1000) and [0, 2000) fire
        ev("a", 1500, 100),  # [0, 2000) is closed, [1000, 3000) is open
        ev("a", 900, 1000),  # both its windows are closed: late
    ]
    got = run_window(rows, sl.windows.sliding("2s", "1s"))
    assert rows_of(got.out, *W, "total") == [
        ("a", -1000, 1000, 1),
        ("a", 0, 2000, 1),
        ("a", 1000, 3000, 110),
        ("a", 2000, 4000, 10),
    ]
    assert rows_of(got.late, "ts") == [(900,)]
    assert got.late_dropped == 1


def test_late_rows_are_counted_over_all_parallel_subtasks():
    # parallelism 2: batches of two rows alternate between the two source subtasks,
    # so both have watermark 4999 before the rows at 200 and 300 arrive
    rows = [ev("a", 5000), ev("b", 5000), ev("c", 5000), ev("d", 5000)]
    rows += [ev("a", 200), ev("b", 200), ev("c", 300), ev("d", 300)]
    got = run_window(rows, sl.windows.tumbling("1s"), batch_size=2, parallelism=2)
    assert rows_of(got.late, "user", "ts") == [("a", 200), ("b", 200), ("c", 300), ("d", 300)]
    assert got.late_dropped == 4


# -- state cleanup ------------------------------------------------------------------------------
class _Unbounded(Source):
    """Batches read once, one per poll; then the split stays open with nothing to read."""

    bounded = False
    coalesce = False

    def __init__(self, batches: list[list[dict[str, Any]]]) -> None:
        self.batches = batches

    def create_splits(self, parallelism: int) -> list[SplitReader]:
        return [_ListSplit(self.batches)]


class _ListSplit(SplitReader):
    def __init__(self, batches: list[list[dict[str, Any]]]) -> None:
        self.todo = list(batches)

    def poll(self, max_rows: int) -> ReadBatch | None:
        if not self.todo:
            return None
        return ReadBatch(pl.DataFrame(self.todo.pop(0)))


def _windows_held(op: WindowOperator) -> list[tuple[Any, ...]]:
    op._compact()
    if op.state is None:
        return []
    return sorted(op.state.select("user", "__ws", "__we").rows())


def test_window_state_is_dropped_once_the_watermark_passes_end_plus_lateness():
    flow = sl.Flow("cleanup")
    out = sl.sinks.collect()
    batches = [[ev("a", 100)], [ev("a", 1100)], [ev("b", 1200)], [ev("a", 2000)]]
    flow.source(_Unbounded(batches), time="ts").key_by("user").window(
        sl.windows.tumbling("1s"), allowed_lateness="500ms"
    ).agg(n=sl.agg.count()).sink(out)
    runtime = LocalRuntime(flow.physical_plan())
    runtime.run(timeout=0.3)
    (op,) = [o for ops in runtime.instances.values() for o in ops if isinstance(o, WindowOperator)]
    # watermark 1999: [0, 1000) fired and passed 999 + 500; [1000, 2000) fired, kept
    assert op.watermark == 1999
    assert _windows_held(op) == [("a", 1000, 2000), ("a", 2000, 3000), ("b", 1000, 2000)]


# -- early firings -------------------------------------------------------------------------------
def test_on_update_trigger_emits_accumulating_partials_and_still_fires_at_the_end():
    rows = [ev("a", 100, 1), ev("a", 200, 2), ev("a", 300, 3), ev("a", 1500, 4)]
    got = run_window(rows, sl.windows.tumbling("1s"), trigger=sl.triggers.on_update())
    first_window = got.out.filter(pl.col("window_start") == 0)
    second_window = got.out.filter(pl.col("window_start") == 1000)
    # early: 1, 3, 6; final (watermark 1499) repeats the full result
    assert seq_of(first_window, "n", "total") == [(1, 1), (2, 3), (3, 6), (3, 6)]
    # early on its only row, final at end of input
    assert seq_of(second_window, "n", "total") == [(1, 4), (1, 4)]


def test_on_update_trigger_with_many_rows_per_batch_fires_once_per_batch():
    rows = [ev("a", 100, 1), ev("a", 200, 2), ev("a", 300, 3), ev("a", 400, 4)]
    got = run_window(rows, sl.windows.tumbling("1s"), trigger=sl.triggers.on_update(), batch_size=2)
    assert seq_of(got.out, "n", "total") == [(2, 3), (4, 10), (4, 10)]


def test_periodic_trigger_emits_partial_results_before_the_window_closes():
    flow = sl.Flow("every")
    out = sl.sinks.collect()
    batches = [[ev("a", 100, 1), ev("a", 200, 2)]]
    flow.source(_Unbounded(batches), time="ts").key_by("user").window(
        sl.windows.tumbling("1s"), trigger=sl.triggers.every("20ms")
    ).agg(n=sl.agg.count(), total=sl.agg.sum("amount")).sink(out)
    job = flow.run(timeout=0.4)
    assert job.stopped
    got = out.to_polars()
    # the watermark (199) never closes [0, 1000): only early firings, with the partial
    assert got.height >= 1
    assert set(got.select("user", "n", "total").rows()) == {("a", 2, 3)}


# -- global windows ---------------------------------------------------------------------------
def test_global_window_with_count_trigger_fires_every_n_rows_of_a_key():
    rows = [ev("a", t, t) for t in range(1, 8)] + [ev("b", t, 10 * t) for t in range(1, 5)]
    rows.sort(key=lambda r: r["ts"])
    got = run_window(rows, sl.windows.global_(sl.triggers.count(3)))
    # accumulating: a fires after 3 and 6 rows (1+2+3, 1+...+6); b after 3 rows.
    # Fired only by its trigger: a's 7th and b's 4th row never fire.
    assert seq_of(got.out.filter(pl.col("user") == "a"), "n", "total") == [(3, 6), (6, 21)]
    assert seq_of(got.out.filter(pl.col("user") == "b"), "n", "total") == [(3, 60)]


def test_global_window_with_purging_count_trigger_fires_disjoint_groups():
    rows = [ev("a", t, t) for t in range(1, 8)]
    got = run_window(rows, sl.windows.global_(sl.triggers.count(3), purge=True), batch_size=2)
    assert seq_of(got.out, "user", "n", "total") == [("a", 3, 6), ("a", 3, 15)]


def test_global_window_needs_a_trigger():
    flow = sl.Flow("g")
    with pytest.raises(sl.ConfigError):
        flow.source([ev("a", 1)], time="ts").key_by("user").window(sl.windows.global_(None))  # type: ignore[arg-type]


# -- processing time ---------------------------------------------------------------------------
def test_processing_time_windows_count_every_row_once():
    rows = [ev("a", 0), ev("a", 10**12), ev("b", -(10**12))]
    flow = sl.Flow("proc")
    out, late = sl.sinks.collect(), sl.sinks.collect()
    w = (
        flow.source(sl.sources.memory(rows, batch_size=1), time="ts")
        .key_by("user")
        .window(sl.windows.tumbling("1h", time="processing"))
        .agg(n=sl.agg.count())
    )
    w.sink(out)
    w.late().sink(late)
    flow.run()
    got = out.to_polars()
    assert got.group_by("user").agg(pl.col("n").sum()).sort("user").rows() == [("a", 2), ("b", 1)]
    assert late.to_polars().height == 0


# -- parallelism ---------------------------------------------------------------------------------
def _random_rows(seed: int, n: int = 400) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    base = -5000
    for _ in range(n):
        base += rng.randint(0, 40)
        rows.append(ev(rng.choice("abcdefg"), base - rng.randint(0, 500), rng.randint(-9, 9)))
    return rows


@pytest.mark.parametrize(
    "window",
    [
        sl.windows.tumbling("1s", offset="100ms"),
        sl.windows.sliding("1s", "300ms"),
        sl.windows.session("150ms"),
    ],
    ids=["tumbling", "sliding", "session"],
)
def test_parallelism_1_and_4_give_the_same_window_results(window):
    rows = _random_rows(7)
    cols = (*W, "n", "total")
    one = run_window(rows, window, watermark="600ms", batch_size=5, parallelism=1)
    four = run_window(rows, window, watermark="600ms", batch_size=5, parallelism=4)
    assert one.late_dropped == 0 and four.late_dropped == 0
    assert one.out.height > 10
    assert rows_of(one.out, *cols) == rows_of(four.out, *cols)


def test_many_small_batches_give_one_result_per_window():
    rows = [ev("a", t) for t in range(0, 20_000, 10)]
    got = run_window(rows, sl.windows.tumbling("1s"), batch_size=7)
    assert rows_of(got.out, "window_start", "n") == [(s, 100) for s in range(0, 20_000, 1000)]
