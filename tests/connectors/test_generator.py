"""Generator and synthetic sources: deterministic rows, rate control."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest

import sluice as sl
from sluice.connectors.sources.generator import splitmix64, synthetic_rows
from tests.connectors.data import run_to
from tests.helpers import same_rows


def numbered(start: int, n: int) -> pl.DataFrame:
    i = pl.int_range(start, start + n, eager=True)
    return pl.DataFrame({"i": i, "ts": i * 10})


@pytest.mark.parametrize(("parallelism", "splits"), [(1, 1), (4, 1), (2, 3)])
def test_rows_do_not_depend_on_parallelism(parallelism: int, splits: int) -> None:
    src = sl.sources.generator(numbered, count=10_007, batch_size=1000, parallelism_splits=splits)
    got = run_to(src, time="ts", parallelism=parallelism)
    assert got.height == 10_007
    assert got.sort("i").equals(numbered(0, 10_007))


def test_one_split_emits_rows_in_order_in_batches() -> None:
    seen: list[int] = []
    flow = sl.Flow("g")
    src = sl.sources.generator(numbered, count=2500, batch_size=1000)
    flow.source(src).sink(sl.sinks.callback(lambda df: seen.append(df.height)))
    flow.run()
    assert seen == [1000, 1000, 500]


def test_blocks_are_dealt_round_robin_to_splits() -> None:
    src = sl.sources.generator(numbered, count=25, batch_size=10)
    splits = src.create_splits(2)
    firsts = [s.poll(100) for s in splits]
    assert [b.data["i"][0] for b in firsts if b is not None] == [0, 10]
    third = splits[0].poll(100)
    assert third is not None and third.data["i"].to_list() == list(range(20, 25))
    assert splits[0].finished and splits[1].finished


def test_rate_limit_is_respected() -> None:
    start = time.perf_counter()
    got = run_to(sl.sources.generator(numbered, count=20_000, rate=100_000), parallelism=2)
    elapsed = time.perf_counter() - start
    assert got.height == 20_000
    assert 0.15 <= elapsed < 5


def test_rate_limited_poll_never_blocks() -> None:
    (split,) = sl.sources.generator(numbered, rate=10, count=100).create_splits(1)
    first = split.poll(1000)
    assert first is not None and first.data.height == 1
    t = time.perf_counter()
    assert split.poll(1000) is None  # the next row is due in 0.1 s
    assert time.perf_counter() - t < 0.01


def test_unbounded_generator_runs_until_timeout() -> None:
    flow = sl.Flow("g")
    out = sl.sinks.collect()
    src = sl.sources.generator(numbered, rate=5000)
    assert not src.bounded
    flow.source(src).sink(out)
    res = flow.run(timeout=0.3)
    assert res.stopped
    rows = out.to_polars()["i"]
    assert 100 < rows.len() <= 5000 * 0.5
    assert rows.equals(pl.Series("i", range(rows.len())))


def test_wrong_function_output_is_a_clear_error() -> None:
    def short(start: int, n: int) -> pl.DataFrame:
        return numbered(start, n - 1)

    with pytest.raises(sl.ConfigError, match="n=5 rows for start=0, got 4 rows"):
        run_to(sl.sources.generator(short, count=5))
    with pytest.raises(sl.ConfigError, match="rate must be > 0"):
        sl.sources.generator(numbered, rate=0)


def test_synthetic_is_deterministic_and_well_formed() -> None:
    src = sl.sources.synthetic(keys=7, count=5000, seed=3, start_ms=1000, events_per_ms=10)
    one = run_to(src, time="ts")
    four = run_to(
        sl.sources.synthetic(
            keys=7, count=5000, seed=3, start_ms=1000, events_per_ms=10, batch_size=333
        ),
        time="ts",
        parallelism=4,
    )
    expected = synthetic_rows(0, 5000, keys=7, seed=3, start_ms=1000, events_per_ms=10)
    assert one.equals(expected)
    assert same_rows(expected, four)
    assert expected.schema == pl.Schema({"key": pl.Int64, "value": pl.Float64, "ts": pl.Int64})
    assert expected["key"].min() == 0 and expected["key"].max() == 6
    assert expected["value"].min() >= 0.0 and expected["value"].max() < 1.0  # type: ignore[operator]
    assert expected["ts"].to_list()[:12] == [1000] * 10 + [1001] * 2
    other_seed = synthetic_rows(0, 5000, keys=7, seed=4, start_ms=1000, events_per_ms=10)
    assert not other_seed["value"].equals(expected["value"])


def test_splitmix64_known_values() -> None:
    # First outputs of SplitMix64 seeded with 0 (state advanced by the golden gamma).
    out = splitmix64(np.array([0, 0x9E3779B97F4A7C15], dtype=np.uint64))
    assert out.tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]
