"""Running aggregation per key (``key_by(...).agg(...)``) over append-only and
upsert streams, checked against DuckDB ``GROUP BY``.

The final table of the output (``materialize`` by the group keys) must be
DuckDB's GROUP BY over the input rows, or, for an upsert input, over the
latest row of every upsert key.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice.api.upsert import materialize
from sluice.operators.base import Clock, Metrics, OperatorContext, Target, TimerService
from sluice.operators.group_agg import GroupAggOperator
from sluice.runtime.messages import TIME, Barrier
from tests.helpers import StopAfter, run_collect, run_with_stops, same_rows
from tests.test_joins import sql
from tests.test_topn import _Files


def gen_rows(n: int, groups: int, seed: int) -> pl.DataFrame:
    r = random.Random(seed)
    return pl.DataFrame(
        {
            "g": [None if r.random() < 0.05 else r.randrange(groups) for _ in range(n)],
            "x": [None if r.random() < 0.1 else r.randrange(-50, 100) for _ in range(n)],
            "y": [r.uniform(0, 10) for _ in range(n)],
        },
        schema={"g": pl.Int64, "x": pl.Int64, "y": pl.Float64},
    )


AGGS = {
    "n": sl.agg.count(),
    "nx": sl.agg.count("x"),
    "sx": sl.agg.sum("x"),
    "mx": sl.agg.mean("x"),
    "my": sl.agg.mean("y"),
}
AGG_SQL = "COUNT(*) AS n, COUNT(x) AS nx, SUM(x) AS sx, AVG(x) AS mx, AVG(y) AS my"


def _duck(query: str, **tables: pl.DataFrame) -> pl.DataFrame:
    # DuckDB widens SUM(BIGINT) to INT128; Sluice keeps Int64
    df = sql(query, **tables)
    return df.with_columns(pl.col(c).cast(pl.Int64) for c in ("n", "nx", "sx") if c in df.columns)


# -- append-only input -------------------------------------------------------------------------
@pytest.mark.parametrize("parallelism", [1, 4])
def test_append_only_input_gives_duckdb_group_by(parallelism: int) -> None:
    df = gen_rows(3_000, 40, seed=parallelism)
    aggs = {**AGGS, "lo": sl.agg.min("x"), "hi": sl.agg.max("y")}
    flow = sl.Flow("agg", parallelism=parallelism)
    out = sl.sinks.collect()
    res = flow.source(sl.sources.memory(df, batch_size=111)).key_by("g").agg(**aggs)
    assert res.upsert_key == ("g",)
    res.sink(out)
    flow.run()
    got = materialize(out, "g")
    want = _duck(f"SELECT g, {AGG_SQL}, MIN(x) AS lo, MAX(y) AS hi FROM t GROUP BY g", t=df)
    assert want.height == 41  # 40 groups and the null group
    assert same_rows(got, want, tol=1e-9)


def test_each_batch_emits_one_row_per_group_it_touched() -> None:
    op = GroupAggOperator("agg", ["g"], {"n": sl.agg.count(), "s": sl.agg.sum("x")}, False)
    sink = _Out()
    op.output.main.append(sink)
    op.open(OperatorContext("agg", 0, 1, TimerService(Clock()), Metrics()))
    r = random.Random(1)
    totals: dict[str, list[int]] = {}
    for i in range(40):
        rows = [{"g": r.choice("abcdefgh"), "x": r.randrange(10), TIME: i} for _ in range(5)]
        for row in rows:
            totals.setdefault(row["g"], []).append(row["x"])
        sink.batches.clear()
        op.push_batch(pl.DataFrame(rows))
        got = pl.concat(sink.batches)
        assert sorted(got.get_column("g").to_list()) == sorted({row["g"] for row in rows})
        for row in got.to_dicts():
            assert row["n"] == len(totals[row["g"]])
            assert row["s"] == sum(totals[row["g"]])
            assert row[TIME] == i  # the latest event time of the group
    assert op.state_rows() == len(totals)


# -- upsert input --------------------------------------------------------------------------------
def gen_updates(n: int, ids: int, seed: int) -> pl.DataFrame:
    """Versions of ``ids`` entities; an entity may move to another group."""
    r = random.Random(seed)
    return pl.DataFrame(
        {
            "id": [r.randrange(ids) for _ in range(n)],
            "g": [r.randrange(8) for _ in range(n)],
            "x": [None if r.random() < 0.1 else r.randrange(100) for _ in range(n)],
            "y": [r.uniform(-5, 5) for _ in range(n)],
            "seq": list(range(n)),
        },
        schema={"id": pl.Int64, "g": pl.Int64, "x": pl.Int64, "y": pl.Float64, "seq": pl.Int64},
    )


LATEST = "(SELECT * FROM t QUALIFY ROW_NUMBER() OVER (PARTITION BY id ORDER BY seq DESC) = 1)"


@pytest.mark.parametrize("parallelism", [1, 4])
def test_upsert_input_aggregates_the_latest_row_of_every_key(parallelism: int) -> None:
    df = gen_updates(2_000, 150, seed=parallelism)
    flow = sl.Flow("agg", parallelism=parallelism)
    out = sl.sinks.collect()
    # one split: the versions of an id arrive in order
    src = flow.source(sl.sources.memory(df, batch_size=150)).with_parallelism(1)
    src.with_upsert_key("id").key_by("g").agg(**AGGS).sink(out)
    flow.run()
    got = materialize(out, "g")
    want = _duck(f"SELECT g, {AGG_SQL} FROM {LATEST} GROUP BY g", t=df)
    assert same_rows(got.filter(pl.col("n") > 0), want, tol=1e-6)


def test_a_group_whose_rows_all_moved_away_ends_with_count_zero() -> None:
    rows = [
        {"id": 1, "g": "a", "x": 5},
        {"id": 2, "g": "a", "x": 7},
        {"id": 1, "g": "b", "x": 6},
        {"id": 2, "g": "b", "x": 8},
    ]
    out = run_collect(
        lambda f: (
            f.source(sl.sources.memory(rows, batch_size=1))
            .with_upsert_key("id")
            .key_by("g")
            .agg(n=sl.agg.count(), s=sl.agg.sum("x"), m=sl.agg.mean("x"))
        )
    )
    got = materialize(out, "g").sort("g").rows()
    assert got == [("a", 0, None, None), ("b", 2, 14, 7.0)]


def test_top_n_then_average_is_nexmark_q4_shaped() -> None:
    # the winning (highest) bid of every auction, averaged per category; the
    # category of an auction is fixed, so the upsert key (auction, rank) and the
    # group key differ, and the winners change as bids arrive
    r = random.Random(4)
    n = 3_000
    bids = pl.DataFrame(
        {
            "auction": (a := [r.randrange(200) for _ in range(n)]),
            "category": [x % 7 for x in a],
            "price": [r.randrange(1_000) for _ in range(n)],
            "seq": list(range(n)),
        }
    )
    for p in (1, 3):
        out = run_collect(
            lambda f: (
                f.source(sl.sources.memory(bids, batch_size=100))
                .key_by("auction")
                .top_n(1, "price", descending=True)
                .key_by("category")
                .agg(avg=sl.agg.mean("price"), auctions=sl.agg.count())
            ),
            parallelism=p,
        )
        want = sql(
            "SELECT category, AVG(final) AS avg, COUNT(*) AS auctions FROM "
            "(SELECT auction, category, MAX(price) AS final FROM b GROUP BY auction, category) "
            "GROUP BY category",
            b=bids,
        ).with_columns(pl.col("auctions").cast(pl.Int64))
        assert same_rows(materialize(out, "category"), want, tol=1e-9)


def test_q4_with_a_join_max_then_mean() -> None:
    # Nexmark q4 as written: MAX(price) per (auction, category) over a join,
    # then AVG per category over that upsert stream
    r = random.Random(7)
    auctions = pl.DataFrame(
        {"id": list(range(100)), "category": [r.randrange(5) for _ in range(100)]}
    )
    bids = pl.DataFrame(
        {
            "auction": [r.randrange(100) for _ in range(2_000)],
            "price": [r.randrange(500) for _ in range(2_000)],
        }
    )

    def build(f: sl.Flow) -> sl.Stream:
        a = f.source(sl.sources.memory(auctions, batch_size=10))
        b = f.source(sl.sources.memory(bids, batch_size=250))
        won = (
            b.join(a, left_on="auction", right_on="id")
            .key_by("auction", "category")
            .agg(final=sl.agg.max("price"))
        )
        assert won.upsert_key == ("auction", "category")
        return won.key_by("category").agg(avg=sl.agg.mean("final"))

    for p in (1, 4):
        got = materialize(run_collect(build, parallelism=p), "category")
        want = sql(
            "SELECT category, AVG(final) AS avg FROM (SELECT a.id, a.category, MAX(b.price) "
            "AS final FROM a JOIN b ON a.id = b.auction GROUP BY a.id, a.category) "
            "GROUP BY category",
            a=auctions,
            b=bids,
        )
        assert same_rows(got, want, tol=1e-9)


def test_group_keys_covering_the_upsert_key_need_one_exchange() -> None:
    f = sl.Flow("plan", parallelism=2)
    s = f.source([{"id": 1, "g": 1, "x": 1}]).with_upsert_key("id")
    s.key_by("id", "g").agg(s=sl.agg.sum("x")).sink(sl.sinks.collect())
    plan = f.physical_plan().describe()
    assert "agg x2  <= agg_changes -chain->" in plan, plan
    assert plan.count("-hash->") == 1, plan


# -- checkpoints ------------------------------------------------------------------------------
CKPT = gen_updates(2_500, 120, seed=9).with_columns(
    # one auction per id, never moving: versions from different splits may interleave
    # only for different ids
    g=pl.col("id") % 9
)


def _ckpt_job(f: sl.Flow) -> sl.Stream:
    return (
        f.source(_Files(CKPT))
        .key_by("id")
        .top_n(1, ["x", "seq"], descending=True)
        .key_by("g")
        .agg(n=sl.agg.count(), sx=sl.agg.sum("x"), my=sl.agg.mean("y"))
    )


def test_stop_and_resume_at_other_parallelism_gives_the_same_table(tmp_path: Any) -> None:
    want = _duck(
        "SELECT g, COUNT(*) AS n, SUM(x) AS sx, AVG(y) AS my FROM (SELECT * FROM t QUALIFY "
        "ROW_NUMBER() OVER (PARTITION BY id ORDER BY x DESC NULLS LAST, seq DESC) = 1) "
        "GROUP BY g",
        t=CKPT,
    )
    parts = []
    plan = [4, 2, 3, 1] * 30
    for attempt, p in enumerate(plan):
        f = sl.Flow("job")
        sink = StopAfter(f, 4 + attempt % 3)
        _ckpt_job(f).sink(sink)
        res = f.run(parallelism=p, checkpoint_dir=tmp_path, checkpoint_interval=None)
        parts.append(sink.to_polars())
        if not res.stopped:
            break
        assert res.checkpoints, "a stop takes a final checkpoint"
    else:
        pytest.fail("the job never finished")
    assert attempt >= 2, "the job ran at parallelism 4, then 2, then 3"
    got = pl.concat([p for p in parts if p.height], how="diagonal_relaxed")
    assert same_rows(materialize(got, "g"), want, tol=1e-6)


# -- bad input ---------------------------------------------------------------------------------
class _Out(Target):
    def __init__(self) -> None:
        self.batches: list[pl.DataFrame] = []

    def push_batch(self, batch: pl.DataFrame) -> None:
        self.batches.append(batch)

    def push_watermark(self, time: int) -> None: ...
    def push_idle(self, idle: bool) -> None: ...
    def push_end(self) -> None: ...
    def push_barrier(self, barrier: Barrier) -> None: ...


@pytest.mark.parametrize("agg", [sl.agg.min("x"), sl.agg.max("x"), sl.agg.count_distinct("x")])
def test_non_invertible_aggregations_of_an_upsert_stream_are_refused(agg: Any) -> None:
    f = sl.Flow("bad")
    top = f.source([{"k": 1, "x": 2}]).key_by("k").top_n(1, "x")
    with pytest.raises(sl.ConfigError, match=r"cannot follow an upsert stream.*count, sum, mean"):
        top.key_by("k").agg(v=agg)


@pytest.mark.parametrize(
    ("aggs", "match"),
    [
        ({}, "at least one aggregation"),
        ({"k": sl.agg.count()}, "collides with a key column"),
        ({"v": "sum"}, "expects an sl.agg"),
        ({"v": sl.agg.last("x")}, "orders rows by event time"),
    ],
)
def test_bad_aggregations_are_refused_when_the_flow_is_built(aggs: Any, match: str) -> None:
    f = sl.Flow("bad")
    with pytest.raises(sl.ConfigError, match=match):
        f.source([{"k": 1, "x": 2}]).key_by("k").agg(**aggs)


@pytest.mark.parametrize("upsert", [False, True])
def test_an_unknown_column_is_named_when_the_job_runs(upsert: bool) -> None:
    def build(f: sl.Flow) -> sl.Stream:
        s = f.source([{"k": 1, "x": 2}])
        if upsert:
            s = s.with_upsert_key("k")
        return s.key_by("k").agg(v=sl.agg.sum("nope"))

    with pytest.raises(sl.SluiceError, match=r"no .*column 'nope'"):
        run_collect(build)


# -- state TTL ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ttl", [60, 150])
def test_event_time_ttl_matches_a_brute_force_reference(ttl: int) -> None:
    # one row per batch: the watermark before row i is max(t[:i]) - 40 - 1; a key's
    # aggregate is forgotten once its latest event time + ttl <= that watermark,
    # and its next row starts a new aggregate
    r = random.Random(ttl)
    rows = [
        {"k": r.randrange(25), "x": r.randrange(100), "t": i * 5 + r.randrange(30)}
        for i in range(400)
    ]
    flow = sl.Flow("ttl")
    out = sl.sinks.collect()
    res = (
        flow.source(sl.sources.memory(rows, batch_size=1), time="t", watermark="40ms")
        .key_by("k")
        .agg(ttl=ttl, n=sl.agg.count(), sx=sl.agg.sum("x"), mx=sl.agg.max("x"))
    )
    res.sink(out)
    job = flow.run()
    state: dict[int, tuple[int, int, int, int]] = {}  # k -> (n, sx, mx, tmax)
    want, hi, expired = [], None, 0
    for row in rows:
        wm = -(2**63) if hi is None else hi - 40 - 1
        k, x, t = row["k"], row["x"], row["t"]
        if k in state and state[k][3] + ttl <= wm:
            del state[k]
            expired += 1
        n, sx, mx, tmax = state.get(k, (0, 0, x, t))
        state[k] = (n + 1, sx + x, max(mx, x), max(tmax, t))
        want.append({"k": k, "n": n + 1, "sx": sx + x, "mx": max(mx, x)})
        hi = t if hi is None else max(hi, t)
    assert expired > 10
    got = out.to_polars()
    assert got.to_dicts() == want  # one row per batch: the upsert stream in input order
    assert job.metric("agg", "groups_expired") >= expired


def test_processing_time_ttl_never_merges_an_expired_group() -> None:
    from tests.test_joins_state import _FakeClock

    clock = _FakeClock()
    op = GroupAggOperator("agg", ["k"], {"n": sl.agg.count()}, False, 1_000, event_time=False)
    out = _Out()
    op.output.main.append(out)
    op.open(OperatorContext("agg", 0, 1, TimerService(clock), Metrics()))
    op.push_batch(pl.DataFrame({"k": [1, 2]}))
    clock.t = 999
    op.push_batch(pl.DataFrame({"k": [1]}))  # k=1 refreshed: expires at 1999
    clock.t = 1_000  # k=2 expired now, with no watermark or timer
    op.push_batch(pl.DataFrame({"k": [2, 1]}))
    rows = [sorted(b.rows()) for b in out.batches]
    assert rows == [[(1, 1), (2, 1)], [(1, 2)], [(1, 3), (2, 1)]]
    assert op.state_rows() == 2


def test_ttl_state_survives_a_checkpoint(tmp_path: Any) -> None:
    # the TTL state (latest event time per key) is part of the snapshot: a job
    # stopped and resumed many times emits exactly the failure-free run's rows
    r = random.Random(3)
    rows = [{"k": r.randrange(5), "t": i * 4 + r.randrange(20)} for i in range(150)]

    def build(f: sl.Flow) -> sl.Stream:
        s = f.source(sl.sources.memory(rows, batch_size=1), time="t", watermark="30ms")
        return s.key_by("k").agg(ttl=60, n=sl.agg.count())

    ref = sl.sinks.collect()
    f = sl.Flow("job")
    build(f).sink(ref)
    f.run()
    want = ref.to_polars()
    assert want.get_column("n").max() < 40  # keys were forgotten and started again
    got, stops = run_with_stops(build, tmp_path, lambda attempt: 10 + attempt % 7)
    assert stops >= 5
    assert got.to_dicts() == want.to_dicts()


def test_ttl_is_refused_where_it_cannot_hold() -> None:
    f = sl.Flow("bad")
    s = f.source([{"k": 1, "x": 2}])
    with pytest.raises(sl.ConfigError, match="not an aggregation name"):
        s.key_by("k").agg(ttl=sl.agg.count())
    with pytest.raises(sl.ConfigError, match="needs an append-only input"):
        s.key_by("k").top_n(1, "x").key_by("k").agg(ttl="1h", n=sl.agg.count())
    with pytest.raises(sl.ConfigError, match="ttl"):
        s.key_by("k").agg(ttl=0, n=sl.agg.count())
