"""Stateless operators, exchanges and plans."""

from __future__ import annotations

import polars as pl
import pytest

import sluice as sl
from tests.helpers import run_collect, same_rows

ROWS = [
    {"user": f"u{i % 7}", "kind": "click" if i % 3 else "view", "amount": i, "ts": i * 10}
    for i in range(200)
]


def test_filter_select_with_columns_match_polars():
    df = pl.DataFrame(ROWS)
    got = run_collect(
        lambda f: (
            f.source(sl.sources.memory(df, batch_size=17), time="ts")
            .filter(pl.col("kind") == "click")
            .with_columns(double=pl.col("amount") * 2)
            .select("user", "double")
        )
    )
    want = df.filter(pl.col("kind") == "click").select("user", double=pl.col("amount") * 2)
    assert same_rows(got, want)


def test_select_of_plain_columns_keeps_event_time_and_order():
    # a select of column names (strings or sl.col) takes the columns directly; the
    # result is the same as Polars' select, the event time still feeds a window
    df = pl.DataFrame(ROWS)

    def build(f: sl.Flow) -> sl.Stream:
        s = f.source(sl.sources.memory(df, batch_size=17), time="ts")
        return (
            s.select(pl.col("amount"), "user")
            .key_by("user")
            .window(sl.windows.tumbling(100))
            .agg(total=sl.agg.sum("amount"))
        )

    got = run_collect(build)
    want = (
        df.group_by("user", (pl.col("ts") // 100).alias("w"))
        .agg(total=pl.col("amount").sum())
        .drop("w")
    )
    assert same_rows(got.select("user", "total"), want)
    plain = run_collect(lambda f: f.source(df).select("kind", sl.col("user")))
    assert plain.columns == ["kind", "user"]
    assert same_rows(plain, df.select("kind", "user"))


def test_select_of_a_missing_column_names_the_operator():
    flow = sl.Flow("missing")
    flow.source([{"x": 1}]).select("x", "nope").sink(sl.sinks.collect())
    with pytest.raises(sl.JobError, match=r"select.*nope"):
        flow.run()


def test_map_flat_map_keep_event_time_and_feed_windows():
    rows = [{"k": "a", "ts": 100, "v": 1}, {"k": "a", "ts": 1100, "v": 2}]
    got = run_collect(
        lambda f: (
            f.source(rows, time="ts")
            .map(lambda r: {"k": r["k"], "v": r["v"] * 10})
            .flat_map(lambda r: [r, {"k": r["k"], "v": 1}])
            .key_by("k")
            .window(sl.windows.tumbling("1s"))
            .agg(total=sl.agg.sum("v"))
        )
    )
    assert sorted(got["total"].to_list()) == [11, 21]


def test_python_predicate_filter():
    got = run_collect(lambda f: f.source(ROWS).filter(lambda r: r["amount"] % 50 == 0))
    assert sorted(got["amount"].to_list()) == [0, 50, 100, 150]


def test_union_merges_streams_and_min_watermark():
    a = [{"k": "x", "ts": t, "v": 1} for t in (0, 500, 1500)]
    b = [{"k": "x", "ts": t, "v": 10} for t in (200, 900)]

    def build(f: sl.Flow) -> sl.Stream:
        sa = f.source(a, time="ts")
        sb = f.source(b, time="ts")
        return sa.union(sb).key_by("k").window(sl.windows.tumbling("1s")).agg(total=sl.agg.sum("v"))

    got = run_collect(build)
    assert sorted(got["total"].to_list()) == [1, 22]


@pytest.mark.parametrize("parallelism", [1, 2, 4])
def test_hash_exchange_routes_each_key_to_one_subtask(parallelism):
    class Seen(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            yield {"user": row["user"], "n": 1}

    flow = sl.Flow("h", parallelism=parallelism)
    out = sl.sinks.collect()
    flow.source(sl.sources.memory(pl.DataFrame(ROWS), batch_size=13)).key_by("user").process(
        Seen()
    ).sink(out)
    res = flow.run()
    assert out.to_polars().height == len(ROWS)
    # the process operator ran on `parallelism` subtasks; keys never split across them
    assert res.metrics["process"].records_in == len(ROWS)


def test_parallelism_changes_nothing_in_results():
    df = pl.DataFrame(ROWS)

    def build(f: sl.Flow) -> sl.Stream:
        return (
            f.source(sl.sources.memory(df, batch_size=9), time="ts", watermark="50ms")
            .filter(pl.col("amount") > 3)
            .key_by("user")
            .window(sl.windows.tumbling("100ms"))
            .agg(n=sl.agg.count(), s=sl.agg.sum("amount"))
        )

    one = run_collect(build, parallelism=1)
    four = run_collect(build, parallelism=4)
    assert one.height > 0 and same_rows(one, four)


def test_physical_plan_chains_forward_edges_and_hashes_keys():
    flow = sl.Flow("p", parallelism=3)
    (
        flow.source(ROWS, time="ts")
        .filter(pl.col("amount") > 0)
        .key_by("user")
        .window(sl.windows.tumbling("1s"))
        .agg(n=sl.agg.count())
        .sink(sl.sinks.collect())
    )
    text = flow.physical_plan().describe()
    assert "filter x3  <= memory -chain->" in text
    assert "window x3  <= filter -hash->" in text


def test_no_sink_is_a_plan_error():
    flow = sl.Flow("nosink")
    flow.source(ROWS)
    with pytest.raises(sl.PlanError, match="no sink"):
        flow.run()


def test_event_time_window_without_time_column_is_rejected():
    flow = sl.Flow("x")
    with pytest.raises(sl.ConfigError, match="time="):
        flow.source(ROWS).key_by("user").window(sl.windows.tumbling("1s"))


def test_failing_user_expression_names_the_operator():
    flow = sl.Flow("boom")
    flow.source([{"x": "a"}]).with_columns(y=pl.col("x").cast(pl.Int64, strict=True)).sink(
        sl.sinks.collect()
    )
    with pytest.raises(sl.JobError, match="with_columns"):
        flow.run()


def test_broadcast_sends_every_row_to_every_subtask():
    flow = sl.Flow("b", parallelism=3)
    out = sl.sinks.collect()
    flow.source(sl.sources.memory([{"x": i} for i in range(10)], batch_size=4)).with_parallelism(
        1
    ).broadcast().sink(out)
    flow.run()
    assert sorted(out.to_polars()["x"].to_list()) == sorted(list(range(10)) * 3)


def test_rebalance_spreads_batches_and_keeps_all_rows():
    flow = sl.Flow("r", parallelism=1)
    out = sl.sinks.collect()
    s = flow.source(sl.sources.memory([{"x": i} for i in range(100)], batch_size=10))
    s.rebalance().with_parallelism(4).sink(out, parallelism=4)
    res = flow.run()
    assert sorted(out.to_polars()["x"].to_list()) == list(range(100))
    assert "rebalance x4  <= memory -rebalance->" in flow.physical_plan().describe()
    assert res.metrics["rebalance"].batches_in == 10


def test_arrow_table_and_iterator_sources():
    import pyarrow as pa

    table = pa.table({"x": [1, 2, 3]})
    assert run_collect(lambda f: f.source(table))["x"].to_list() == [1, 2, 3]
    it = iter([{"x": 1}, pl.DataFrame({"x": [2, 3]}), {"x": 4}])
    assert sorted(run_collect(lambda f: f.source(it))["x"].to_list()) == [1, 2, 3, 4]
