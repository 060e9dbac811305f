"""Session windows (docs/event-time.md, Flink's EventTimeSessionWindows).

Each event opens ``[t, t + gap)``; windows of one key that intersect or touch
merge into their union, with their partial aggregates. Rows are usually sent one
per batch so that the watermark moves between rows exactly as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

import sluice as sl


@dataclass
class Run:
    out: pl.DataFrame  # session results, window_start/window_end as epoch ms
    late: pl.DataFrame
    late_dropped: int


def run_sessions(
    rows: list[dict[str, Any]],
    gap: Any,
    *,
    watermark: Any = 0,
    allowed_lateness: Any = 0,
    batch_size: int = 1,
    parallelism: int = 1,
    aggs: dict[str, Any] | None = None,
) -> Run:
    flow = sl.Flow("sessions", parallelism=parallelism)
    out, late = sl.sinks.collect(), sl.sinks.collect()
    res = (
        flow.source(
            sl.sources.memory(rows, batch_size=batch_size),
            time="ts",
            watermark=sl.bounded_out_of_orderness(watermark),
        )
        .key_by("user")
        .window(sl.windows.session(gap), allowed_lateness=allowed_lateness)
        .agg(**(aggs or {"n": sl.agg.count(), "total": sl.agg.sum("amount")}))
    )
    res.sink(out)
    res.late().sink(late)
    job = flow.run()
    got = out.to_polars()
    if got.height:
        got = got.with_columns(pl.col("window_start", "window_end").dt.epoch("ms"))
    return Run(got, late.to_polars(), job.metrics["window"].late_dropped)


def ev(user: str, ts: int, amount: int = 1, **extra: Any) -> dict[str, Any]:
    return {"user": user, "ts": ts, "amount": amount, **extra}


def rows_of(df: pl.DataFrame, *cols: str) -> list[tuple[Any, ...]]:
    return sorted(df.select(cols).rows()) if df.height else []


def seq_of(df: pl.DataFrame, *cols: str) -> list[tuple[Any, ...]]:
    return df.select(cols).rows() if df.height else []


S = ("user", "window_start", "window_end", "n", "total")


def test_events_closer_than_the_gap_form_one_session():
    rows = [ev("a", 0, 1), ev("a", 500, 2), ev("a", 1400, 3), ev("a", 5000, 4)]
    got = run_sessions(rows, "1s")
    assert rows_of(got.out, *S) == [("a", 0, 2400, 3, 6), ("a", 5000, 6000, 1, 4)]


def test_sessions_that_touch_merge():
    # [0, 1000) and [1000, 2000) touch (start == end): one session, as in Flink
    got = run_sessions([ev("a", 0, 1), ev("a", 1000, 2)], "1s")
    assert rows_of(got.out, *S) == [("a", 0, 2000, 2, 3)]


def test_sessions_one_millisecond_apart_do_not_merge():
    got = run_sessions([ev("a", 0, 1), ev("a", 1001, 2)], "1s")
    assert rows_of(got.out, *S) == [("a", 0, 1000, 1, 1), ("a", 1001, 2001, 1, 2)]


def test_a_bridging_event_arriving_later_joins_two_sessions():
    rows = [ev("a", 0, 1), ev("a", 3000, 2), ev("a", 1500, 4)]
    # gap 1.5 s: [0, 1500) and [3000, 4500) are apart until [1500, 3000) touches both
    got = run_sessions(rows, "1500ms", watermark="2s")
    assert rows_of(got.out, *S) == [("a", 0, 4500, 3, 7)]
    assert got.late.height == 0


def test_bridging_event_in_the_same_batch_as_the_sessions_it_joins():
    rows = [ev("a", 0, 1), ev("a", 3000, 2), ev("a", 1500, 4)]
    got = run_sessions(rows, "1500ms", watermark="5s", batch_size=3)
    assert rows_of(got.out, *S) == [("a", 0, 4500, 3, 7)]


def test_bridging_event_across_many_batches_and_both_sides():
    ts = [0, 2000, 4000, 6000, 1000, 5000, 3000]
    got = run_sessions([ev("a", t) for t in ts], 1000, watermark="10s")
    assert rows_of(got.out, *S) == [("a", 0, 7000, 7, 7)]


def test_sessions_are_per_key():
    rows = [ev("a", 0), ev("b", 500), ev("a", 900), ev("b", 2000), ev("a", 1800), ev("b", 2100)]
    got = run_sessions(rows, "1s", watermark="1s", parallelism=2, batch_size=1)
    assert rows_of(got.out, *S) == [
        ("a", 0, 2800, 3, 3),
        ("b", 500, 1500, 1, 1),
        ("b", 2000, 3100, 2, 2),
    ]


def test_dynamic_gap_from_an_expression_per_event():
    rows = [
        ev("a", 0, gap=500),  # [0, 500)
        ev("a", 800, gap=2000),  # [800, 2800)
        ev("a", 2500, gap=100),  # [2500, 2600): inside the previous one
        ev("a", 2800, gap=10),  # [2800, 2810): touches [800, 2800)
        ev("b", 0, gap=5000),  # [0, 5000)
        ev("b", 4000, gap=1),  # inside
    ]
    got = run_sessions(rows, sl.col("gap"), watermark="10s")
    assert rows_of(got.out, "user", "window_start", "window_end", "n") == [
        ("a", 0, 500, 1),
        ("a", 800, 2810, 3),
        ("b", 0, 5000, 2),
    ]


def test_session_closes_when_the_watermark_reaches_its_end_minus_one():
    rows = [ev("a", 0, 1), ev("a", 1000, 2), ev("a", 2999, 4), ev("a", 3000, 8)]
    # 1000 touches [0, 1000), so the session is [0, 2000): it fires once the
    # watermark reaches 1999 (after 2999 arrives), not at 999
    got = run_sessions(rows, "1s")
    assert rows_of(got.out, *S) == [("a", 0, 2000, 2, 3), ("a", 2999, 4000, 2, 12)]


def test_late_session_event_goes_to_the_late_output():
    rows = [ev("a", 0, 1), ev("a", 5000, 2), ev("a", 500, 4)]
    got = run_sessions(rows, "1s")
    assert rows_of(got.out, *S) == [("a", 0, 1000, 1, 1), ("a", 5000, 6000, 1, 2)]
    assert rows_of(got.late, "user", "ts", "amount") == [("a", 500, 4)]
    assert got.late_dropped == 1


def test_event_late_for_its_own_window_that_touches_an_open_session_joins_it():
    # watermark 3499 when 2000 arrives: [2000, 3000) alone would be late, but it
    # touches the open session [3000, 4500) and merges into [2000, 4500) (Flink
    # checks lateness on the merged window)
    rows = [ev("a", 3000, 1), ev("a", 3500, 2), ev("a", 2000, 4)]
    got = run_sessions(rows, "1s")
    assert rows_of(got.out, *S) == [("a", 2000, 4500, 3, 7)]
    assert got.late.height == 0 and got.late_dropped == 0


def test_event_late_for_its_own_window_joins_a_session_opened_earlier_in_the_same_batch():
    # batch 1: [0, 5000] -> watermark 2999 (out-of-orderness 2 s), [0, 1000) fired
    # batch 2: 2500 opens [2500, 3500) (not late); then 1600's window [1600, 2600)
    # is late alone but touches [2500, 3500): element by element, as in Flink,
    # it merges into [1600, 3500)
    rows = [ev("a", 0, 1), ev("a", 5000, 2), ev("a", 2500, 4), ev("a", 1600, 8)]
    got = run_sessions(rows, "1s", watermark="2s", batch_size=2)
    assert rows_of(got.out, *S) == [
        ("a", 0, 1000, 1, 1),
        ("a", 1600, 3500, 2, 12),
        ("a", 5000, 6000, 1, 2),
    ]
    assert got.late.height == 0 and got.late_dropped == 0


def test_late_events_chained_through_each_other_into_an_open_session_all_count():
    # batch 1: 4000, 4000 -> watermark 3999, open session [4000, 5000)
    # batch 2: 3000 ([3000, 4000) late alone) touches [4000, 5000) and merges;
    # then 2500 ([2500, 3500) late alone) touches the merged [3000, 5000): merges too
    rows = [ev("a", 4000, 1), ev("a", 4000, 2), ev("a", 3000, 4), ev("a", 2500, 8)]
    got = run_sessions(rows, "1s", batch_size=2)
    assert rows_of(got.out, *S) == [("a", 2500, 5000, 4, 15)]
    assert got.late.height == 0 and got.late_dropped == 0


def test_session_lateness_follows_arrival_order_within_a_batch():
    # as in Flink, elements are handled one by one: 1600 comes before 2500 in
    # batch 2, so when it is handled its window [1600, 2600) is late and touches
    # nothing kept: it is dropped, even though 2500 then opens [2500, 3500)
    rows = [ev("a", 0, 1), ev("a", 5000, 2), ev("a", 1600, 8), ev("a", 2500, 4)]
    got = run_sessions(rows, "1s", watermark="2s", batch_size=2)
    assert rows_of(got.out, *S) == [
        ("a", 0, 1000, 1, 1),
        ("a", 2500, 3500, 1, 4),
        ("a", 5000, 6000, 1, 2),
    ]
    assert rows_of(got.late, "user", "ts", "amount") == [("a", 1600, 8)]
    assert got.late_dropped == 1


def test_late_but_allowed_event_merges_with_a_fired_session_and_refires():
    rows = [
        ev("a", 0, 1),
        ev("a", 2000, 2),  # watermark 1999: [0, 1000) fires
        ev("a", 1000, 4),  # bridges [0, 1000) (kept: lateness 5 s) and [2000, 3000)
    ]
    got = run_sessions(rows, "1s", allowed_lateness="5s")
    assert seq_of(got.out, *S) == [("a", 0, 1000, 1, 1), ("a", 0, 3000, 3, 7)]
    assert got.late.height == 0


def test_late_but_allowed_event_inside_a_fired_session_refires_it_at_once():
    rows = [
        ev("a", 0, 1),
        ev("a", 500, 2),
        ev("a", 3000, 4),  # watermark 2999: [0, 1500) fires
        ev("a", 200, 8),  # [200, 1200) is inside the kept session: fires again at once
        ev("a", 9000, 16),
    ]
    got = run_sessions(rows, "1s", allowed_lateness="2s")
    assert seq_of(got.out.filter(pl.col("window_start") == 0), *S) == [
        ("a", 0, 1500, 2, 3),
        ("a", 0, 1500, 3, 11),
    ]
    assert rows_of(got.out.filter(pl.col("window_start") > 0), *S) == [
        ("a", 3000, 4000, 1, 4),
        ("a", 9000, 10000, 1, 16),
    ]


def test_session_aggregates_merge_exactly():
    rows = [
        ev("a", 0, 5, v="x"),
        ev("a", 3000, 1, v="y"),
        ev("a", 1500, 3, v="x"),
        ev("a", 4000, 7, v=None),
    ]
    aggs = {
        "n": sl.agg.count(),
        "mn": sl.agg.min("amount"),
        "mx": sl.agg.max("amount"),
        "mean": sl.agg.mean("amount"),
        "first": sl.agg.first("amount"),
        "last": sl.agg.last("amount"),
        "distinct": sl.agg.count_distinct("v"),
    }
    got = run_sessions(rows, "1500ms", watermark="5s", aggs=aggs)
    assert got.out.drop("user").rows(named=True) == [
        {
            "window_start": 0,
            "window_end": 5500,
            "n": 4,
            "mn": 1,
            "mx": 7,
            "mean": 4.0,
            "first": 5,
            "last": 7,
            "distinct": 2,
        }
    ]


def test_collect_list_in_a_merged_session_keeps_arrival_order():
    # collect_list is documented as "all values ... in arrival order"
    rows = [ev("a", 3000, 1), ev("a", 1500, 2), ev("a", 2200, 3)]
    got = run_sessions(rows, "1s", watermark="5s", aggs={"amounts": sl.agg.collect_list("amount")})
    assert got.out.select("window_start", "window_end", "amounts").rows() == [
        (1500, 4000, [1, 2, 3])
    ]


def test_sessions_with_parallelism_1_and_4_agree():
    rows = []
    for i in range(200):
        rows.append(ev("abcde"[i % 5], (i * 37) % 1000 + i * 20, i))
    one = run_sessions(rows, 120, watermark="1s", batch_size=3, parallelism=1)
    four = run_sessions(rows, 120, watermark="1s", batch_size=3, parallelism=4)
    assert one.late_dropped == 0 and four.late_dropped == 0
    assert rows_of(one.out, *S) == rows_of(four.out, *S)
    assert one.out["n"].sum() == 200


def test_a_batch_shorter_than_the_gap_is_one_session_per_key_in_arrival_order():
    # every window of the batch overlaps every other: each key's rows are one
    # session; collect_list keeps arrival order, first/last go by event time
    rows = [ev("a", 300, 1), ev("b", 100, 2), ev("a", 100, 3), ev("b", 900, 4), ev("a", 200, 5)]
    aggs = {
        "n": sl.agg.count(),
        "amounts": sl.agg.collect_list("amount"),
        "first": sl.agg.first("amount"),
        "last": sl.agg.last("amount"),
    }
    got = run_sessions(rows, "1s", watermark="5s", batch_size=5, aggs=aggs)
    assert rows_of(got.out, "user", "window_start", "window_end", "n", "first", "last") == [
        ("a", 100, 1300, 3, 3, 1),
        ("b", 100, 1900, 2, 2, 4),
    ]
    lists = dict(got.out.select("user", "amounts").rows())
    assert lists == {"a": [1, 3, 5], "b": [2, 4]}
    # the same rows one at a time give the same sessions
    one = run_sessions(rows, "1s", watermark="5s", batch_size=1, aggs=aggs)
    assert rows_of(one.out, "user", "window_start", "window_end", "n", "first", "last") == (
        rows_of(got.out, "user", "window_start", "window_end", "n", "first", "last")
    )
