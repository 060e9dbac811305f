"""Sliding windows by panes (slices of gcd(size, slide)), against brute force.

The window operator keeps sliding windows as pane partials and merges the
panes of a window when it fires. These tests hold it to the published
semantics (docs/event-time.md, Flink): a row-by-row reference simulator
assigns every row to each of its windows, fires windows at the watermark,
re-fires late-but-allowed updates at once, fires early on every update when
asked, and sends rows late for all their windows to the late output.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice.errors import JobError
from sluice.operators.base import Clock, Metrics, OperatorContext, TimerService
from sluice.operators.partials import PS, Panes
from sluice.operators.windows import WindowOperator
from sluice.state.snapshot import Snapshot
from tests.helpers import StopAfter, same_rows
from tests.test_checkpoint_restore import _FileLike

MIN = -(2**63)


# -- the reference ------------------------------------------------------------------------
def windows_of(t: int, size: int, slide: int, offset: int) -> Iterator[int]:
    """Starts of the sliding windows holding ``t`` (docs/event-time.md)."""
    w = t - (t - offset) % slide
    while w > t - size:
        yield w
        w -= slide


def simulate(
    rows: list[dict[str, Any]],
    size: int,
    slide: int,
    *,
    offset: int = 0,
    disorder: int = 0,
    lateness: int = 0,
    batch: int = 1,
    on_update: bool = False,
) -> tuple[list[tuple[Any, ...]], list[int]]:
    """Emitted (user, start, end, n, total, lo, hi) rows and late row ids, row by row."""
    state: dict[tuple[Any, int], list[int]] = {}
    out: list[tuple[Any, ...]] = []
    late: list[int] = []
    wm, top = MIN, MIN

    def emit(key: tuple[Any, int]) -> None:
        vals = state[key]
        out.append((key[0], key[1], key[1] + size, len(vals), sum(vals), min(vals), max(vals)))

    for i in range(0, len(rows), batch):
        touched: set[tuple[Any, int]] = set()
        for r in rows[i : i + batch]:
            t = r["ts"]
            top = max(top, t)
            starts = list(windows_of(t, size, slide, offset))
            if all(w + size - 1 + lateness <= wm for w in starts):
                late.append(r["id"])
                continue
            for w in starts:
                if w + size - 1 + lateness > wm:
                    state.setdefault((r["user"], w), []).append(r["amount"])
                    touched.add((r["user"], w))
        for key in sorted(touched):
            if key[1] + size - 1 <= wm or on_update:
                emit(key)  # a late-but-allowed re-firing, or an early firing
        new = top - disorder - 1
        if new > wm:
            for key in sorted(state):
                if wm < key[1] + size - 1 <= new:
                    emit(key)
            wm = new
            state = {k: v for k, v in state.items() if k[1] + size - 1 + lateness > wm}
    for key in sorted(state):
        if key[1] + size - 1 > wm:
            emit(key)
    return out, late


def run(
    rows: list[dict[str, Any]],
    size: int,
    slide: int,
    *,
    offset: int = 0,
    disorder: int = 0,
    lateness: int = 0,
    batch: int = 1,
    trigger: Any = None,
    parallelism: int = 1,
) -> tuple[pl.DataFrame, pl.DataFrame, Any]:
    flow = sl.Flow("panes", parallelism=parallelism)
    out, late = sl.sinks.collect(), sl.sinks.collect()
    res = (
        flow.source(
            sl.sources.memory(rows, batch_size=batch),
            time="ts",
            watermark=sl.bounded_out_of_orderness(disorder),
        )
        .key_by("user")
        .window(
            sl.windows.sliding(size, slide, offset=offset),
            allowed_lateness=lateness,
            trigger=trigger,
        )
        .agg(
            n=sl.agg.count(),
            total=sl.agg.sum("amount"),
            lo=sl.agg.min("amount"),
            hi=sl.agg.max("amount"),
        )
    )
    res.sink(out)
    res.late().sink(late)
    job = flow.run()
    got = out.to_polars()
    got = got.with_columns(pl.col("window_start", "window_end").dt.epoch("ms"))
    return got, late.to_polars(), job.metrics["window"]


def as_frame(emitted: list[tuple[Any, ...]]) -> pl.DataFrame:
    cols = ["user", "window_start", "window_end", "n", "total", "lo", "hi"]
    return pl.DataFrame(emitted, schema=cols, orient="row")


def random_rows(rng: random.Random, n: int, spread: int, disorder: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        ts = i * spread // n + rng.randint(-disorder, 0) - spread // 3  # negative times too
        rows.append({"id": i, "user": rng.choice("abc"), "ts": ts, "amount": rng.randint(-50, 100)})
    return rows


# -- results against the reference ---------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_random_sizes_and_slides_match_brute_force(seed):
    """Slides that divide the size and slides that do not (panes = gcd), offsets,
    negative times, out-of-order rows within the bound, batches of several rows."""
    rng = random.Random(seed)
    slide = rng.choice([3, 4, 5, 7, 10])
    size = slide * rng.randint(1, 4) + rng.choice([0, 0, 1, 2, slide // 2])
    offset = rng.randint(0, slide - 1)
    disorder = rng.choice([0, 5, 20])
    batch = rng.choice([1, 3, 17])
    rows = random_rows(rng, 300, 400, disorder)
    got, late, _ = run(rows, size, slide, offset=offset, disorder=disorder, batch=batch)
    want, want_late = simulate(rows, size, slide, offset=offset, disorder=disorder, batch=batch)
    assert want_late == [] and late.height == 0
    assert same_rows(got, as_frame(want)), (size, slide, offset)


@pytest.mark.parametrize("seed", range(8))
def test_late_rows_refire_every_fired_window_of_their_pane(seed):
    """Rows later than the watermark: within allowed lateness they update their
    pane and every kept window holding it fires again at once; beyond it they
    are dropped from the windows that are gone, or sent to the late output."""
    rng = random.Random(100 + seed)
    slide = rng.choice([2, 3, 5])
    size = slide * rng.randint(2, 4) + rng.choice([0, 1])
    lateness = rng.choice([0, 4, 9, 25])
    batch = rng.choice([1, 1, 4])
    rows = random_rows(rng, 250, 300, 40)  # disorder far beyond the watermark bound
    got, late, metrics = run(rows, size, slide, disorder=3, lateness=lateness, batch=batch)
    want, want_late = simulate(rows, size, slide, disorder=3, lateness=lateness, batch=batch)
    refired = len(want) - len({w[:3] for w in want})
    assert want_late or refired, "the input must have rows behind the watermark"
    assert (sorted(late["id"].to_list()) if late.height else []) == want_late
    assert metrics.late_dropped == len(want_late)
    assert same_rows(got, as_frame(want)), (size, slide, lateness)


@pytest.mark.parametrize("seed", range(6))
def test_on_update_trigger_fires_early_windows_changed_by_each_batch(seed):
    rng = random.Random(200 + seed)
    slide = rng.choice([2, 4, 5])
    size = slide * rng.randint(1, 3) + rng.choice([0, 1])
    lateness = rng.choice([0, 10])
    batch = rng.choice([1, 5])
    rows = random_rows(rng, 150, 200, 15)
    got, _, _ = run(
        rows,
        size,
        slide,
        disorder=5,
        lateness=lateness,
        batch=batch,
        trigger=sl.triggers.on_update(),
    )
    want, _ = simulate(
        rows, size, slide, disorder=5, lateness=lateness, batch=batch, on_update=True
    )
    assert same_rows(got, as_frame(want)), (size, slide, lateness)


def test_late_pairs_are_counted_for_rows_still_in_a_kept_window():
    """A row late for its older windows but not its newest one counts in the
    newest and the dropped (row, window) pairs are counted in metrics."""
    rows = [
        {"id": 0, "user": "a", "ts": 100, "amount": 1},
        {"id": 1, "user": "a", "ts": 91, "amount": 2},  # wm 99: windows [85,95), [90,100) gone
    ]
    got, late, metrics = run(rows, 15, 5)
    want, want_late = simulate(rows, 15, 5)
    assert late.height == 0 and want_late == []
    assert same_rows(got, as_frame(want))
    assert metrics.extra["late_window_assignments_dropped"] == 2


def test_more_aggregations_match_a_polars_batch_computation():
    """mean, first, last and count_distinct over panes equal a batch group_by
    of every (row, window) pair."""
    rng = random.Random(7)
    rows = [
        {"user": rng.choice("xy"), "ts": i * 3 + rng.randint(0, 2), "v": rng.randint(0, 9)}
        for i in range(400)
    ]
    size, slide = 50, 20  # panes of 10 ms
    flow = sl.Flow("aggs")
    out = sl.sinks.collect()
    flow.source(sl.sources.memory(rows, batch_size=37), time="ts", watermark="10ms").key_by(
        "user"
    ).window(sl.windows.sliding(size, slide)).agg(
        m=sl.agg.mean("v"),
        f=sl.agg.first("v"),
        la=sl.agg.last("v"),
        d=sl.agg.count_distinct("v"),
    ).sink(out)
    flow.run()
    got = out.to_polars().with_columns(pl.col("window_start", "window_end").dt.epoch("ms"))
    pairs = pl.DataFrame(
        [
            {**r, "arrival": i, "window_start": w, "window_end": w + size}
            for i, r in enumerate(rows)
            for w in windows_of(r["ts"], size, slide, 0)
        ]
    )
    want = pairs.group_by("user", "window_start", "window_end").agg(
        m=pl.col("v").mean(),
        f=pl.col("v").sort_by("ts", "arrival").first(),
        la=pl.col("v").sort_by("ts", "arrival").last(),
        d=pl.col("v").n_unique().cast(pl.Int64),
    )
    assert same_rows(got, want.select(got.columns), tol=1e-9)


def test_collect_list_keeps_arrival_order_on_the_window_path():
    """collect_list is in arrival order (across batches), which merging panes in
    time order would not keep: those jobs keep one state row per window."""
    rows = [{"user": "a", "ts": t, "v": v} for t, v in [(7, 1), (2, 2), (8, 3), (1, 4)]]
    flow = sl.Flow("lists")
    out = sl.sinks.collect()
    flow.source(sl.sources.memory(rows, batch_size=1), time="ts", watermark="10ms").key_by(
        "user"
    ).window(sl.windows.sliding(10, 5)).agg(l=sl.agg.collect_list("v")).sink(out)
    flow.run()
    got = out.to_polars().sort("window_start")
    want = {}
    for r in rows:
        for w in windows_of(r["ts"], 10, 5, 0):
            want.setdefault(w, []).append(r["v"])
    assert got["l"].to_list() == [want[w] for w in sorted(want)]


# -- checkpoints ----------------------------------------------------------------------------
ROWS = [{"k": i % 7, "ts": i * 37, "v": i} for i in range(6000)]


def _reference(size: int, slide: int) -> pl.DataFrame:
    acc: dict[tuple[int, int], list[int]] = defaultdict(list)
    for r in ROWS:
        for w in windows_of(r["ts"], size, slide, 0):
            acc[(r["k"], w)].append(r["v"])
    return pl.DataFrame(
        [(k, w, w + size, len(v), sum(v)) for (k, w), v in acc.items()],
        schema=["k", "window_start", "window_end", "n", "s"],
        orient="row",
    )


def _sliding_job(flow: sl.Flow, sink: Any) -> None:
    s = flow.source(_FileLike(ROWS), time="ts", watermark="200ms")
    s.key_by("k").window(sl.windows.sliding("1s", "400ms"), allowed_lateness="100ms").agg(
        n=sl.agg.count(), s=sl.agg.sum("v")
    ).sink(sink)


def _collected(parts: list[pl.DataFrame]) -> pl.DataFrame:
    got = pl.concat([p for p in parts if p.height], how="diagonal_relaxed")
    return got.with_columns(pl.col("window_start", "window_end").dt.epoch("ms"))


def test_stop_and_resume_at_other_parallelisms_gives_the_brute_force_output(tmp_path):
    parts = []
    for p in (3, 1, 2, 4, 2, 3, 1, *([2] * 40)):
        f = sl.Flow("job")
        sink = StopAfter(f, 2)
        _sliding_job(f, sink)
        res = f.run(parallelism=p, checkpoint_dir=tmp_path, checkpoint_interval=None)
        parts.append(sink.to_polars())
        if not res.stopped:
            break
    else:
        pytest.fail("the job never finished")
    assert len(parts) >= 4
    assert same_rows(_collected(parts), _reference(1000, 400))


def test_pane_checkpoints_restore_on_the_rocksdb_backend_and_back(tmp_path):
    """A pane snapshot restores into the RocksDB window table (one row per
    window) and that one back into the memory backend."""
    pytest.importorskip("rocksdict")
    parts = []
    for attempt in range(60):
        backend = ("memory", "rocksdb")[attempt % 2]
        f = sl.Flow("job", state_backend=backend, state_dir=tmp_path / "state")
        sink = StopAfter(f, 3)
        _sliding_job(f, sink)
        res = f.run(parallelism=2, checkpoint_dir=tmp_path / "ckpt", checkpoint_interval=None)
        parts.append(sink.to_polars())
        if not res.stopped:
            break
    assert len(parts) >= 3
    assert same_rows(_collected(parts), _reference(1000, 400))


def _operator(spec: Any, lateness: int = 0) -> WindowOperator:
    op = WindowOperator("w", ["k"], spec, [sl.agg.count().bind("n", "n")], lateness)
    op.open(OperatorContext("w", 0, 1, TimerService(Clock()), Metrics()))
    return op


def _pane_table(fired: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"k": [1, 2], PS: [0, 0], "n_count": [3, 4], "__fw": fired},
        schema={"k": pl.Int64, PS: pl.Int64, "n_count": pl.Int64, "__fw": pl.Int64},
    )


def test_panes_fired_to_different_watermarks_restore_as_windows():
    """Old subtasks that had fired up to different watermarks: the restored
    instance goes on with one row per window, each with its own fired flag."""
    op = _operator(sl.windows.sliding(20, 10), lateness=100)
    op.restore_state(Snapshot(keyed={"panes": _pane_table([9, 19])}, keys=["k"]))
    assert op.panes is None
    st = op.state
    assert st is not None
    got = st.sort("k", "__ws").select("k", "__ws", "__fired").rows()
    assert got == [(1, -10, True), (1, 0, False), (2, -10, True), (2, 0, True)]


def test_restoring_panes_into_another_window_kind_names_the_operator():
    op = _operator(sl.windows.tumbling(10))
    with pytest.raises(JobError, match=r"'w'.*sliding-window panes.*Tumbling"):
        op.restore_state(Snapshot(keyed={"panes": _pane_table([9, 9])}, keys=["k"]))


def test_pane_count_per_window_follows_gcd():
    p = Panes(10, 4, offset=1)
    assert p.pane == 2
    panes = pl.DataFrame({PS: [5]})
    starts = sorted(p.windows_of(panes)["__ws"].to_list())
    assert starts == [w for w in sorted(windows_of(5, 10, 4, 1))]
