"""Top-N (ROW_NUMBER) with upsert output, checked against DuckDB and a brute force.

The final table of the upsert output (``materialize`` by its upsert key) must
be DuckDB's ``ROW_NUMBER() OVER (PARTITION BY ... ORDER BY ...) <= n`` over
the same rows, with Flink's conventions: ties in arrival order, nulls the
smallest value. Per batch, exactly the slots whose row changed come out.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice.api.upsert import materialize
from sluice.connectors.sources.memory import _FrameSplit
from sluice.operators import topn
from sluice.operators.base import Clock, Metrics, OperatorContext, Target, TimerService
from sluice.operators.topn import TopNOperator
from sluice.runtime.messages import TIME, Barrier
from tests.helpers import StopAfter, run_collect, run_with_stops, same_rows
from tests.test_joins import sql


def gen_bids(n: int, keys: int, seed: int, *, nulls: bool = True) -> pl.DataFrame:
    """Rows with few distinct sort values (many ties), some null sort values
    and null keys; ``seq`` is the arrival order."""
    r = random.Random(seed)

    def maybe(v: Any) -> Any:
        return None if nulls and r.random() < 0.08 else v

    return pl.DataFrame(
        {
            "k": [maybe(r.randrange(keys)) for _ in range(n)],
            "price": [maybe(r.randrange(20)) for _ in range(n)],
            "ts": [r.randrange(5) for _ in range(n)],
            "seq": list(range(n)),
        },
        schema={"k": pl.Int64, "price": pl.Int64, "ts": pl.Int64, "seq": pl.Int64},
    )


def duck_topn(df: pl.DataFrame, n: int, order: str, rank: str = "rank_number") -> pl.DataFrame:
    # Flink's null collation LOW, spelled out (DuckDB's own default is NULLS LAST);
    # equal sort values rank in arrival order (seq)
    return sql(
        f"SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY {order}, seq) "
        f"AS {rank} FROM t) WHERE {rank} <= {n}",
        t=df,
    )


CASES = [
    # (n, by, descending, DuckDB ORDER BY)
    (1, "price", True, "price DESC NULLS LAST"),
    (3, "price", False, "price ASC NULLS FIRST"),
    (3, ["price", "ts"], [True, False], "price DESC NULLS LAST, ts ASC NULLS FIRST"),
    (2, ["ts", "price"], [False, True], "ts ASC NULLS FIRST, price DESC NULLS LAST"),
    (50, "price", True, "price DESC NULLS LAST"),  # n > rows per key
]


@pytest.mark.parametrize(("n", "by", "desc", "order"), CASES)
def test_final_table_is_duckdb_row_number(n: int, by: Any, desc: Any, order: str) -> None:
    df = gen_bids(2_000, 60, seed=n)
    out = run_collect(
        lambda f: (
            f.source(sl.sources.memory(df, batch_size=97)).key_by("k").top_n(n, by, descending=desc)
        ),
        parallelism=1,
    )
    got = materialize(out, ["k", "rank_number"])
    want = duck_topn(df, n, order)
    assert want.height > 60
    assert same_rows(got, want)  # whole rows: ties were broken by arrival order
    assert got.get_column("rank_number").dtype == pl.Int64


@pytest.mark.parametrize(("n", "by", "desc", "order"), CASES[1:4])
def test_parallel_result_matches_duckdb_on_the_sort_columns(
    n: int, by: Any, desc: Any, order: str
) -> None:
    # four source splits interleave, so which of two tied rows arrived first is
    # up to the scheduler; the sort values in every slot are not
    df = gen_bids(3_000, 80, seed=10 + n)
    out = run_collect(
        lambda f: (
            f.source(sl.sources.memory(df, batch_size=50)).key_by("k").top_n(n, by, descending=desc)
        ),
        parallelism=4,
    )
    cols = ["k", "rank_number", "price", "ts"]
    got = materialize(out, ["k", "rank_number"]).select(cols)
    assert same_rows(got, duck_topn(df, n, order).select(cols))


def test_nulls_last_overrides_flinks_default() -> None:
    df = gen_bids(500, 5, seed=3)
    out = run_collect(
        lambda f: f.source(df).key_by("k").top_n(4, "price", nulls_last=True),
    )
    got = materialize(out, ["k", "rank_number"])
    assert same_rows(got, duck_topn(df, 4, "price ASC NULLS LAST"))


def test_ties_rank_in_arrival_order() -> None:
    rows = [{"k": "a", "v": 5, "id": i} for i in range(4)] + [{"k": "a", "v": 7, "id": 9}]
    out = run_collect(
        lambda f: f.source(sl.sources.memory(rows, batch_size=2)).key_by("k").top_n(3, "v")
    )
    got = materialize(out, ["k", "rank_number"]).sort("rank_number")
    assert got.get_column("id").to_list() == [0, 1, 2]


def test_rank_none_with_n_1_is_keyed_by_the_keys() -> None:
    # Nexmark q18: the latest bid of every (bidder, auction)
    r = random.Random(5)
    df = pl.DataFrame(
        {
            "bidder": [r.randrange(6) for _ in range(400)],
            "auction": [r.randrange(4) for _ in range(400)],
            "ts": [r.randrange(1_000) for _ in range(400)],
            "seq": list(range(400)),
        }
    )
    flow = sl.Flow("q18")
    out = sl.sinks.collect()
    latest = (
        flow.source(sl.sources.memory(df, batch_size=33))
        .key_by("bidder", "auction")
        .top_n(1, "ts", descending=True, rank=None)
    )
    assert latest.upsert_key == ("bidder", "auction")
    latest.sink(out)
    flow.run()
    got = materialize(out, list(latest.upsert_key))
    assert got.columns == df.columns
    want = sql(
        "SELECT bidder, auction, ts, seq FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY "
        "bidder, auction ORDER BY ts DESC, seq) AS rn FROM t) WHERE rn = 1",
        t=df,
    )
    assert same_rows(got, want)


# -- per batch: exactly the changed slots -------------------------------------------------
class _Out(Target):
    def __init__(self) -> None:
        self.batches: list[pl.DataFrame] = []

    def push_batch(self, batch: pl.DataFrame) -> None:
        self.batches.append(batch)

    def push_watermark(self, time: int) -> None: ...
    def push_idle(self, idle: bool) -> None: ...
    def push_end(self) -> None: ...
    def push_barrier(self, barrier: Barrier) -> None: ...


def _open(op: TopNOperator) -> _Out:
    out = _Out()
    op.output.main.append(out)
    op.open(OperatorContext("top_n", 0, 1, TimerService(Clock()), Metrics()))
    return out


def _brute_top(rows: list[dict[str, Any]], n: int) -> dict[tuple[Any, int], int]:
    """(key, rank) -> id of the row in that slot: sort by price descending,
    nulls last, ties by arrival."""
    by_key: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault(row["k"], []).append(row)
    slots = {}
    for k, rs in by_key.items():
        ordered = sorted(rs, key=lambda x: (x["price"] is None, -(x["price"] or 0), x["id"]))
        for i, row in enumerate(ordered[:n]):
            slots[(k, i + 1)] = row["id"]
    return slots


@pytest.mark.parametrize("collide", [False, True])
@pytest.mark.parametrize("n", [1, 3])
def test_each_batch_emits_exactly_the_changed_slots(
    n: int, collide: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if collide:  # every key hashes alike: the rows of untouched keys come along
        monkeypatch.setattr(topn, "_key_hash", lambda keys: pl.lit(7, pl.UInt64).alias(topn.HASH))
    r = random.Random(n)
    op = TopNOperator("top_n", ["k"], n, ["price"], [True], [True], "rank")
    out = _open(op)
    seen: list[dict[str, Any]] = []
    nid = 0
    total = 0
    for _ in range(60):
        batch = []
        for _ in range(r.randrange(1, 12)):
            batch.append(
                {
                    "k": r.choice(["a", "b", "c", None]),
                    "price": None if r.random() < 0.1 else r.randrange(30),
                    "id": nid,
                    TIME: 1_000 + nid,
                }
            )
            nid += 1
        before = _brute_top(seen, n)
        seen.extend(batch)
        after = _brute_top(seen, n)
        changed = {slot: i for slot, i in after.items() if before.get(slot) != i}
        out.batches.clear()
        op.push_batch(pl.DataFrame(batch, schema_overrides={"price": pl.Int64}))
        got = pl.concat(out.batches) if out.batches else pl.DataFrame()
        assert got.height == len(changed)
        total += got.height
        if got.height:
            assert {(x["k"], x["rank"]): x["id"] for x in got.to_dicts()} == changed
            # the event time of an output row is that of the row in the slot
            assert (got.get_column(TIME) == got.get_column("id") + 1_000).all()
    assert total < nid * n, "slots that did not change were not re-emitted"
    assert op.state_rows() == len(_brute_top(seen, n))
    assert op.metrics.extra["slots_updated"] == total


def test_a_batch_whose_key_type_differs_from_the_state_still_finds_its_keys() -> None:
    op = TopNOperator("top_n", ["k"], 1, ["price"], [True], [True], "rank")
    out = _open(op)
    rows = [{"k": k, "price": p, "id": i, TIME: i} for i, (k, p) in enumerate([(1, 5), (2, 9)])]
    op.push_batch(pl.DataFrame(rows, schema_overrides={"k": pl.Int64}))
    later = [{"k": 1, "price": 7, "id": 2, TIME: 2}, {"k": 2, "price": 3, "id": 3, TIME: 3}]
    out.batches.clear()
    op.push_batch(pl.DataFrame(later, schema_overrides={"k": pl.Int32}))
    got = pl.concat(out.batches)
    assert got.select("k", "id").rows() == [(1, 2)]  # key 2 kept its better row
    assert op.state_rows() == 2
    for dtype, i in ((pl.Int64, 4), (pl.Int32, 6), (pl.Int64, 8)):  # and back: still found
        out.batches.clear()
        rows = [{"k": 1, "price": 1, "id": i, TIME: i}, {"k": 2, "price": 20 + i, "id": i + 1}]
        rows[1][TIME] = i + 1
        op.push_batch(pl.DataFrame(rows, schema_overrides={"k": dtype}))
        assert pl.concat(out.batches).select("k", "id").rows() == [(2, i + 1)]
        assert op.state_rows() == 2


# -- checkpoints: stop, resume at another parallelism --------------------------------------
class _Files(sl.sources.MemorySource):
    """Splits that do not depend on the parallelism (like files)."""

    def __init__(self, df: pl.DataFrame) -> None:
        super().__init__(df, batch_size=25)

    def create_splits(self, parallelism: int) -> list[Any]:
        return [_FrameSplit(self.frame, i, 4, self.batch_size) for i in range(4)]


CKPT = gen_bids(3_000, 50, seed=77)


def _ckpt_job(f: sl.Flow) -> sl.Stream:
    # (price, seq) is unique, so the top-3 does not depend on arrival order
    return f.source(_Files(CKPT)).key_by("k").top_n(3, ["price", "seq"], descending=True)


def test_stop_and_resume_at_other_parallelism_gives_the_same_table(tmp_path: Any) -> None:
    want = duck_topn(CKPT, 3, "price DESC NULLS LAST, seq DESC")
    parts = []
    plan = [4, 2, 3, 1] * 30
    for attempt, p in enumerate(plan):
        f = sl.Flow("job")
        sink = StopAfter(f, 5 + attempt % 4)
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
    assert same_rows(materialize(got, ["k", "rank_number"]), want)


# -- upsert key metadata -----------------------------------------------------------------------
def test_upsert_key_follows_filter_select_and_with_columns() -> None:
    f = sl.Flow("meta")
    src = f.source([{"k": 1, "v": 2}])
    assert src.upsert_key is None
    top = src.key_by("k").top_n(2, "v")
    uk = ("k", "rank_number")
    assert top.upsert_key == uk
    assert top.filter(sl.col("v") > 0).upsert_key == uk
    assert top.select("k", "rank_number", w=sl.col("v") * 2).upsert_key == uk
    assert top.select(sl.col("k"), sl.col("rank_number"), "v").upsert_key == uk
    assert top.with_columns(w=sl.col("v") + 1).upsert_key == uk
    assert top.with_columns(sl.col("v").alias("w")).upsert_key == uk
    # a key column dropped, renamed or recomputed: the rows no longer say what they replace
    assert top.select("k", "v").upsert_key is None
    assert top.select(sl.col("k"), sl.col("rank_number").alias("r")).upsert_key is None
    assert top.with_columns(k=sl.col("k") + 1).upsert_key is None
    assert top.with_columns(pl.all() * 2).upsert_key is None
    assert top.select(pl.all()).upsert_key is None  # columns unknown until run time
    assert top.map(lambda r: r).upsert_key is None
    # repartitioning by part of the upsert key keeps each key's versions in order
    assert top.key_by("k").filter(sl.col("v") > 0).stream.upsert_key == uk
    assert top.key_by("v").filter(sl.col("v") > 0).stream.upsert_key is None
    assert top.with_upsert_key().upsert_key is None
    assert src.with_upsert_key("k").upsert_key == ("k",)


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0, "by": "v"}, "n must be an integer >= 1"),
        ({"n": True, "by": "v"}, "n must be an integer >= 1"),
        ({"n": 2, "by": []}, "by must be a column name"),
        ({"n": 2, "by": ["v", "w"], "descending": [True]}, "1 value.*2 sort column"),
        ({"n": 2, "by": "v", "descending": "yes"}, "descending must be a bool"),
        ({"n": 2, "by": "v", "rank": None}, "rank=None needs n=1"),
        ({"n": 2, "by": "v", "rank": "k"}, "also a key or sort column"),
    ],
)
def test_bad_arguments_are_refused_when_the_flow_is_built(kwargs: Any, match: str) -> None:
    f = sl.Flow("bad")
    ks = f.source([{"k": 1, "v": 2, "w": 3}]).key_by("k")
    with pytest.raises(sl.ConfigError, match=match):
        ks.top_n(**kwargs)


def test_top_n_of_an_upsert_stream_is_refused() -> None:
    f = sl.Flow("bad")
    top = f.source([{"k": 1, "v": 2}]).key_by("k").top_n(1, "v")
    with pytest.raises(sl.ConfigError, match="needs an append-only input"):
        top.key_by("k").top_n(1, "v")


@pytest.mark.parametrize(
    ("by", "rank", "match"),
    [
        ("nope", "rank_number", "no sort column 'nope'"),
        ("v", "v2", "rank column 'v2' is already an input column"),
    ],
)
def test_unknown_columns_are_named_when_the_job_runs(by: str, rank: str, match: str) -> None:
    with pytest.raises(sl.SluiceError, match=match):
        run_collect(
            lambda f: f.source([{"k": 1, "v": 2, "v2": 0}]).key_by("k").top_n(1, by, rank=rank)
        )


# -- state TTL ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2])
def test_event_time_ttl_matches_a_brute_force_reference(n: int) -> None:
    # batches of a few rows, each followed by a watermark; a key's top-N is
    # forgotten once the latest event time of a row that entered it + ttl <= the
    # watermark, and is never ranked against after that
    ttl = 50
    r = random.Random(n)
    op = TopNOperator("top_n", ["k"], n, ["price"], [True], [True], "rank", ttl, True)
    out = _open(op)
    tops: dict[Any, list[dict[str, Any]]] = {}  # key -> rows in its top-N, in rank order
    nid, t, wm, expired = 0, 0, -(2**63), 0
    for _ in range(150):
        for k in list(tops):  # what the reference forgets at this watermark
            if max(x[TIME] for x in tops[k]) + ttl <= wm:
                del tops[k]
                expired += 1
        batch = []
        for _ in range(r.randrange(1, 5)):
            t += r.randrange(0, 12)
            batch.append({"k": r.choice("abcde"), "price": r.randrange(20), "id": nid, TIME: t})
            nid += 1
        changed: dict[tuple[Any, int], int] = {}
        for row in batch:
            before = {i + 1: x["id"] for i, x in enumerate(tops.get(row["k"], []))}
            ranked = sorted([*tops.get(row["k"], []), row], key=lambda x: (-x["price"], x["id"]))[
                :n
            ]
            tops[row["k"]] = ranked
            for i, x in enumerate(ranked):
                if before.get(i + 1) != x["id"]:
                    changed[(row["k"], i + 1)] = x["id"]
        out.batches.clear()
        op.push_batch(pl.DataFrame(batch))
        got = pl.concat(out.batches) if out.batches else pl.DataFrame()
        assert {(x["k"], x["rank"]): x["id"] for x in got.to_dicts()} == changed
        wm = t - 30
        op.push_watermark(wm)
    for k in list(tops):  # the last watermark
        if max(x[TIME] for x in tops[k]) + ttl <= wm:
            del tops[k]
            expired += 1
    assert expired > 20
    assert op.metrics.extra["keys_expired"] == expired
    assert op.state_rows() == sum(len(v) for v in tops.values())


def test_processing_time_ttl_forgets_a_key_before_ranking() -> None:
    from tests.test_joins_state import _FakeClock

    clock = _FakeClock()
    op = TopNOperator("top_n", ["k"], 1, ["price"], [True], [True], None, 1_000, False)
    out = _Out()
    op.output.main.append(out)
    op.open(OperatorContext("top_n", 0, 1, TimerService(clock), Metrics()))
    op.push_batch(pl.DataFrame({"k": [1, 2], "price": [10, 10]}))
    clock.t = 999
    op.push_batch(pl.DataFrame({"k": [1], "price": [20]}))  # k=1 written again: until 1999
    clock.t = 1_000  # k=2 expired now, with no watermark or timer
    op.push_batch(pl.DataFrame({"k": [1, 2], "price": [15, 5]}))
    last = sorted(out.batches[-1].rows())
    assert last == [(2, 5)]  # k=2's 10 is forgotten: 5 is its best; k=1 keeps 20
    assert op.state_rows() == 2


def test_ttl_top_n_resumes_from_a_checkpoint(tmp_path: Any) -> None:
    r = random.Random(5)
    rows = [
        {"k": r.randrange(4), "x": r.randrange(50), "t": i * 4 + r.randrange(10)}
        for i in range(150)
    ]

    def build(f: sl.Flow) -> sl.Stream:
        s = f.source(sl.sources.memory(rows, batch_size=1), time="t", watermark="20ms")
        return s.key_by("k").top_n(2, "x", descending=True, ttl=60)

    ref = sl.sinks.collect()
    f = sl.Flow("job")
    build(f).sink(ref)
    res = f.run()
    want = ref.to_polars()
    assert res.metric("top_n", "keys_expired") > 5
    got, stops = run_with_stops(build, tmp_path, lambda attempt: 8 + attempt % 5)
    assert stops >= 5
    assert got.to_dicts() == want.to_dicts()


def test_a_top_n_saved_without_ttl_restored_with_one_counts_from_the_rows_event_times() -> None:
    plain = TopNOperator("top_n", ["k"], 1, ["x"], [True], [True], None)
    _open(plain)
    plain.push_batch(pl.DataFrame({"k": [1, 2], "x": [5, 6], TIME: [1_000, 5_000]}))
    snap = plain.snapshot_state()
    op = TopNOperator("top_n", ["k"], 1, ["x"], [True], [True], None, 2_000, True)
    _open(op)
    op.restore_state(snap)
    op.push_watermark(2_999)
    assert op.state_rows() == 2
    op.push_watermark(3_000)  # k=1 written at 1 s: expired at 3 s; k=2 lives until 7 s
    assert op.state_rows() == 1
    assert op.state is not None and op.state.get_column("k").to_list() == [2]
