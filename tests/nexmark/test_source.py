"""``sl.sources.nexmark`` inside flows: the same events at any parallelism, the
three kinds split out as plain tables, exact resume after a stop."""

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
from sluice.nexmark.source import auctions, bids, persons
from tests.helpers import StopAfter, same_rows

N = 20_000


def flat(events: pl.DataFrame) -> pl.DataFrame:
    """Events with the structs unnested (prefixed), so rows can be sorted and compared."""
    return events.select(
        "event_type",
        "date_time",
        *(pl.col(c).struct.unnest().name.prefix(f"{c}.") for c in ("person", "auction", "bid")),
    )


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
