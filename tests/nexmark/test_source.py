"""``sl.sources.nexmark`` inside flows: the same events at any parallelism, the
three kinds split out as plain tables or generated alone (``kind=``), exact
resume after a stop."""

from __future__ import annotations

import time

import polars as pl
import pytest

import sluice as sl
from sluice.nexmark.generator import (
    AUCTION_SCHEMA,
    BID_SCHEMA,
    PERSON_SCHEMA,
    NexmarkConfig,
    generate,
    generate_events,
)
from sluice.nexmark.source import auctions, bids, nexmark_streams, persons
from tests.helpers import StopAfter, same_rows

N = 20_000
KINDS = ("person", "auction", "bid")


def flat(events: pl.DataFrame) -> pl.DataFrame:
    """Events with the structs unnested (prefixed), so rows can be sorted and compared."""
    return events.select(
        "event_type",
        "date_time",
        *(pl.col(c).struct.unnest().name.prefix(f"{c}.") for c in ("person", "auction", "bid")),
    )


def of_kind(cfg: NexmarkConfig, kind: str) -> pl.DataFrame:
    """The events of one kind, filtered out of the combined events and unnested by Polars."""
    ev = generate_events(cfg, 0, cfg.events)
    return ev.filter(pl.col("event_type") == KINDS.index(kind)).select(pl.col(kind).struct.unnest())


@pytest.mark.parametrize("parallelism", [1, 3])
def test_the_flow_yields_exactly_the_generated_events(parallelism: int) -> None:
    f, out = sl.Flow("nexmark"), sl.sinks.collect()
    src = sl.sources.nexmark(events=N, seed=4, batch_size=1000)
    f.source(src, time="date_time", watermark="4s").sink(out)
    f.run(parallelism=parallelism)
    got = out.to_polars()
    want = generate_events(NexmarkConfig(events=N, seed=4), 0, N)
    assert got.schema == want.schema
    assert same_rows(flat(got), flat(want))


def test_splits_read_disjoint_contiguous_blocks() -> None:
    src = sl.sources.nexmark(events=10_500, batch_size=1000)
    splits = src.create_splits(3)
    firsts: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for i, s in enumerate(splits):
        while not s.finished:
            b = s.poll(10_000)
            assert b is not None
            firsts[i].append(b.first_line)
            assert b.data.height == min(1000, 10_500 - b.first_line)
    assert firsts == {0: [0, 3000, 6000, 9000], 1: [1000, 4000, 7000, 10_000], 2: [2000, 5000, 8000]}  # fmt: skip


@pytest.mark.parametrize("parallelism", [1, 3])
def test_kind_helpers_give_the_three_tables(parallelism: int) -> None:
    f = sl.Flow("kinds")
    sinks = {k: sl.sinks.collect() for k in ("person", "auction", "bid")}
    ev = f.source(sl.sources.nexmark(events=N, batch_size=2000), time="date_time")
    persons(ev).sink(sinks["person"])
    auctions(ev).sink(sinks["auction"])
    bids(ev).sink(sinks["bid"])
    f.run(parallelism=parallelism)
    want = generate(NexmarkConfig(events=N))
    for name, schema in (
        ("person", PERSON_SCHEMA),
        ("auction", AUCTION_SCHEMA),
        ("bid", BID_SCHEMA),
    ):
        got = sinks[name].to_polars()
        assert got.schema == schema
        assert same_rows(got, getattr(want, name))


def test_event_time_windows_over_bids_match_a_batch_group_by() -> None:
    f, out = sl.Flow("q"), sl.sinks.collect()
    ev = f.source(sl.sources.nexmark(events=N, batch_size=700), time="date_time", watermark="4s")
    bids(ev).key_by("auction").window(sl.windows.tumbling("1s")).agg(
        n=sl.agg.count(), top=sl.agg.max("price")
    ).sink(out)
    f.run(parallelism=2)
    got = out.to_polars().select("auction", pl.col("window_start").cast(pl.Int64), "n", "top")
    b = generate(NexmarkConfig(events=N)).bid
    want = (
        b.with_columns(window_start=pl.col("date_time").dt.epoch("ms") // 1000 * 1000)
        .group_by("auction", "window_start")
        .agg(n=pl.len().cast(got.schema["n"]), top=pl.col("price").max())
    )
    assert same_rows(got, want)


@pytest.mark.parametrize("parallelism", [1, 3])
def test_stop_and_resume_from_a_checkpoint_is_exact(tmp_path, parallelism: int) -> None:
    cfg = NexmarkConfig(events=N, seed=9)
    parts = []
    for attempt in range(60):
        f = sl.Flow("job")
        sink = StopAfter(f, 2 + attempt % 3)
        src = sl.sources.nexmark(events=N, seed=9, batch_size=500)
        f.source(src, time="date_time", watermark="4s", max_batch_rows=500).sink(sink)
        res = f.run(parallelism=parallelism, checkpoint_dir=tmp_path, checkpoint_interval=None)
        parts.append(sink.to_polars())
        if not res.stopped:
            break
        assert res.checkpoints
    else:
        pytest.fail("the job never finished")
    assert attempt > 1
    got = pl.concat([p for p in parts if p.height])
    assert same_rows(flat(got), flat(generate_events(cfg, 0, N)))


def test_max_rate_paces_in_wall_clock() -> None:
    f, out = sl.Flow("paced"), sl.sinks.collect()
    f.source(sl.sources.nexmark(events=3000, max_rate=10_000)).sink(out)
    start = time.perf_counter()
    f.run()
    elapsed = time.perf_counter() - start
    assert out.to_polars().height == 3000
    assert 0.25 <= elapsed < 10


# -- one kind per source ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("batch_size", "parallelism"), [(1000, 1), (65_536, 1), (777, 3), (7, 2)])
def test_a_per_kind_source_is_the_filtered_combined_stream(
    kind: str, batch_size: int, parallelism: int
) -> None:
    n = 3000 if batch_size == 7 else N  # blocks of 7 ids: most hold no person at all
    cfg = NexmarkConfig(events=n, seed=6)
    f, out = sl.Flow("one-kind"), sl.sinks.collect()
    src = sl.sources.nexmark(events=n, seed=6, batch_size=batch_size, kind=kind)
    f.source(src, time="date_time", watermark="4s").sink(out)
    f.run(parallelism=parallelism)
    got, want = out.to_polars(), of_kind(cfg, kind)
    assert got.schema == want.schema
    if parallelism == 1:  # one split: event-id order
        assert got.equals(want)
    else:
        assert same_rows(got, want)


@pytest.mark.parametrize("parallelism", [1, 2])
def test_columns_generate_a_projection_of_the_bids(parallelism: int) -> None:
    cfg = NexmarkConfig(events=N, seed=1)
    f, out = sl.Flow("q2"), sl.sinks.collect()
    src = sl.sources.nexmark(
        events=N, seed=1, kind="bid", columns=["price", "auction", "date_time"]
    )
    bids_ = f.source(src, time="date_time", watermark="4s")
    bids_.filter(pl.col("auction") % 123 == 0).select("auction", "price").sink(out)
    f.run(parallelism=parallelism)
    want = of_kind(cfg, "bid").filter(pl.col("auction") % 123 == 0).select("auction", "price")
    assert want.height > 10
    assert same_rows(out.to_polars(), want)


@pytest.mark.parametrize(("kind", "parallelism"), [("bid", 1), ("bid", 3), ("person", 2)])
def test_a_per_kind_source_resumes_exactly_from_a_checkpoint(
    tmp_path, kind: str, parallelism: int
) -> None:
    cfg = NexmarkConfig(events=N, seed=9)
    parts = []
    for attempt in range(80):
        f = sl.Flow("job")
        sink = StopAfter(f, 2 + attempt % 3)
        src = sl.sources.nexmark(events=N, seed=9, batch_size=500, kind=kind)
        f.source(src, time="date_time", watermark="4s", max_batch_rows=500).sink(sink)
        res = f.run(parallelism=parallelism, checkpoint_dir=tmp_path, checkpoint_interval=None)
        parts.append(sink.to_polars())
        if not res.stopped:
            break
        assert res.checkpoints
    else:
        pytest.fail("the job never finished")
    assert attempt > 1
    got = pl.concat([p for p in parts if p.height])
    assert same_rows(got, of_kind(cfg, kind))


def test_restored_split_positions_continue_with_the_next_event() -> None:
    cfg = NexmarkConfig(events=5000, seed=3)
    src = sl.sources.nexmark(events=5000, seed=3, batch_size=300, kind="auction")
    splits = src.create_splits(2)
    first: list[pl.DataFrame] = []
    for s in splits:  # read a little of each split, in polls of 70 ids
        for _ in range(4):
            b = s.poll(70)
            if b is not None:
                first.append(b.data)
    states = [s.snapshot() for s in splits]
    assert [st["emitted"] for st in states] == [280, 280]  # positions count ids, not rows
    rest: list[pl.DataFrame] = []
    for s, st in zip(src.create_splits(2), states, strict=True):
        s.restore(st)
        while not s.finished:
            b = s.poll(1000)
            if b is not None:
                rest.append(b.data)
    got = pl.concat(first + rest)
    want = of_kind(cfg, "auction")
    assert got.height == want.height == 300
    assert same_rows(got, want)


def test_max_rate_of_a_per_kind_source_counts_event_ids() -> None:
    f, out = sl.Flow("paced"), sl.sinks.collect()
    f.source(sl.sources.nexmark(events=3000, max_rate=10_000, kind="bid")).sink(out)
    start = time.perf_counter()
    f.run()
    elapsed = time.perf_counter() - start
    assert out.to_polars().height == 2760
    assert 0.25 <= elapsed < 10  # 3000 ids at 10,000 per second, not 2760 bids


def test_nexmark_streams_add_one_source_per_kind_used() -> None:
    cfg = NexmarkConfig(events=N, seed=2)
    f = sl.Flow("streams")
    streams = nexmark_streams(f, events=N, seed=2, columns={"bid": ["bidder", "date_time"]})
    assert streams("bid") is streams.bid
    out = {"person": sl.sinks.collect(), "bid": sl.sinks.collect()}
    streams.person.sink(out["person"])
    streams.bid.sink(out["bid"])
    res = f.run(parallelism=2)
    assert res.metric("nexmark-bid", "records_out") == 18_400
    assert same_rows(out["person"].to_polars(), of_kind(cfg, "person"))
    assert same_rows(out["bid"].to_polars(), of_kind(cfg, "bid").select("bidder", "date_time"))


def test_a_join_of_two_per_kind_streams_matches_polars() -> None:
    """q3's join of auctions and persons, each kind from its own source."""
    f, out = sl.Flow("q3"), sl.sinks.collect()
    streams = nexmark_streams(f, events=N)
    a = streams.auction.filter(pl.col("category") == 10).select("id", "seller")
    p = streams.person.select(pl.col("id").alias("pid"), "name", "state")
    a.join(p, left_on="seller", right_on="pid").select("name", "state", "id").sink(out)
    f.run(parallelism=2)
    t = generate(NexmarkConfig(events=N))
    want = (
        t.auction.filter(pl.col("category") == 10)
        .join(t.person, left_on="seller", right_on="id", suffix="_p")
        .select("name", "state", "id")
    )
    assert want.height > 100
    assert same_rows(out.to_polars(), want)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"events": 10, "kind": "bids"}, "kind"),
        ({"events": 10, "columns": ["price"]}, "kind"),
        ({"events": 10, "kind": "bid", "columns": ["prize"]}, "prize"),
    ],
)
def test_bad_kind_input_names_the_parameter(kwargs, word) -> None:
    with pytest.raises(sl.ConfigError, match=word):
        sl.sources.nexmark(**kwargs)


def test_nexmark_streams_need_the_event_time_column() -> None:
    with pytest.raises(sl.ConfigError, match="date_time"):
        nexmark_streams(sl.Flow("x"), events=10, columns={"bid": ["price"]})
    with pytest.raises(sl.ConfigError, match="kind"):
        nexmark_streams(sl.Flow("x"), events=10, columns={"bids": ["date_time"]})
    with pytest.raises(sl.ConfigError, match="max_rate"):
        nexmark_streams(sl.Flow("x"), events=10, max_rate=-1)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"events": -1}, "events"),
        ({"events": 10, "seed": -3}, "seed"),
        ({"events": 10, "rate": 0}, "rate"),
        ({"events": 10, "max_rate": 0}, "max_rate"),
        ({"events": 10, "max_rate": float("nan")}, "max_rate"),
        ({"events": 10, "batch_size": 0}, "batch_size"),
        ({"events": 10, "batch_size": 2.5}, "batch_size"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, word) -> None:
    with pytest.raises(sl.ConfigError, match=word):
        sl.sources.nexmark(**kwargs)
