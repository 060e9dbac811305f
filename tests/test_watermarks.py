"""Watermarks (docs/event-time.md): per split, combined by minimum, idleness,
end of input, and what counts as late.

The window operator is the probe: a row is late (goes to ``.late()``) exactly
when its window's ``end - 1 + allowed_lateness`` is at or behind the window
operator's watermark, so late rows and fired windows show where the watermark
was. Scripted sources give exact control over splits and their timing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice.connectors.base import ReadBatch, Source, SplitReader

Rows = list[dict[str, Any]]


class ScriptedSplit(SplitReader):
    """Returns its batches one per poll, each not before its ``at_ms`` since open.

    Bounded: finished after its last batch. Unbounded: stays open, polls return None.
    """

    def __init__(self, index: int, script: list[tuple[int, Rows]], bounded: bool) -> None:
        self.split_id = str(index)
        self.script = list(script)
        self.bounded = bounded
        self.opened = 0.0
        self.finished = bounded and not script

    def open(self, ctx: Any) -> None:
        self.opened = time.monotonic()

    def poll(self, max_rows: int) -> ReadBatch | None:
        if not self.script:
            return None
        at_ms, rows = self.script[0]
        if (time.monotonic() - self.opened) * 1000 < at_ms:
            return None
        self.script.pop(0)
        if self.bounded and not self.script:
            self.finished = True
        return ReadBatch(pl.DataFrame(rows))


class ScriptedSource(Source):
    """One split per script; a script is a list of batches or of (at_ms, batch)."""

    coalesce = False

    def __init__(self, *scripts: list[Any], bounded: bool = True) -> None:
        self.scripts = [[b if isinstance(b, tuple) else (0, b) for b in s] for s in scripts]
        self.bounded = bounded

    def create_splits(self, parallelism: int) -> list[SplitReader]:
        return [ScriptedSplit(i, s, self.bounded) for i, s in enumerate(self.scripts)]


@dataclass
class Run:
    out: pl.DataFrame
    late: pl.DataFrame
    late_dropped: int
    stopped: bool


def run_tumbling(
    source: Any,
    *,
    watermark: Any = 0,
    parallelism: int = 1,
    size: Any = "1s",
    timeout: float | None = None,
    window: Any = None,
    out: Any = None,
) -> Run:
    flow = sl.Flow("watermarks", parallelism=parallelism)
    out, late = out if out is not None else sl.sinks.collect(), sl.sinks.collect()
    if isinstance(watermark, sl.WatermarkStrategy):
        strategy = watermark
    else:
        strategy = sl.bounded_out_of_orderness(watermark)
    res = (
        flow.source(source, time="ts", watermark=strategy)
        .key_by("user")
        .window(window or sl.windows.tumbling(size))
        .agg(n=sl.agg.count(), total=sl.agg.sum("amount"))
    )
    res.sink(out)
    res.late().sink(late)
    job = flow.run(timeout=timeout)
    got = out.to_polars()
    if got.height:
        got = got.with_columns(pl.col("window_start", "window_end").dt.epoch("ms"))
    return Run(got, late.to_polars(), job.metrics["window"].late_dropped, job.stopped)


def ev(ts: int, amount: int = 1, user: str = "a") -> dict[str, Any]:
    return {"user": user, "ts": ts, "amount": amount}


def one_per_batch(*ts: int) -> Any:
    return sl.sources.memory([ev(t, t) for t in ts], batch_size=1)


def windows(run: Run) -> list[tuple[int, int, int]]:
    """(window_start, window_end, n) of every result, sorted."""
    return (
        sorted(run.out.select("window_start", "window_end", "n").rows()) if run.out.height else []
    )


def late_ts(run: Run) -> list[int]:
    return sorted(run.late["ts"].to_list()) if run.late.height else []


# -- one split: the bounded out-of-orderness formula -------------------------------------------
def test_watermark_is_max_seen_minus_bound_minus_one():
    # bound 1 s: after 1999 the watermark is 998, so [0, 1000) (max ts 999) is open;
    # after 2000 it is 999 and [0, 1000) is closed
    got = run_tumbling(one_per_batch(1999, 0, 2000, 1), watermark="1s")
    assert late_ts(got) == [1]
    assert windows(got) == [(0, 1000, 1), (1000, 2000, 1), (2000, 3000, 1)]


def test_monotonous_watermark_closes_a_window_at_its_max_timestamp():
    got = run_tumbling(one_per_batch(1000, 999), watermark=sl.monotonous())
    assert late_ts(got) == [999]
    assert got.late_dropped == 1


def test_watermark_never_goes_back_after_an_out_of_order_batch():
    # after 5000 the watermark is 4999; the batch with 100 must not lower it,
    # so 3000 is late as well
    got = run_tumbling(one_per_batch(5000, 100, 3000, 6000))
    assert late_ts(got) == [100, 3000]
    assert windows(got) == [(5000, 6000, 1), (6000, 7000, 1)]


def test_watermark_moves_per_batch_not_per_row():
    # one batch [5000, 100]: 100 is checked against the watermark before the batch
    got = run_tumbling(sl.sources.memory([ev(5000), ev(100), ev(200)], batch_size=2))
    assert late_ts(got) == [200]
    assert windows(got) == [(0, 1000, 1), (5000, 6000, 1)]


# -- several splits: the minimum ----------------------------------------------------------------
def test_two_splits_in_two_subtasks_combine_by_minimum():
    # memory source, parallelism 2: batches alternate split 0, split 1.
    # Split 1 lags far behind split 0; none of its rows may be late.
    src = one_per_batch(10_000, 100, 20_000, 900, 30_000, 950)
    got = run_tumbling(src, parallelism=2)
    assert late_ts(got) == []
    assert windows(got) == [
        (0, 1000, 3),
        (10_000, 11_000, 1),
        (20_000, 21_000, 1),
        (30_000, 31_000, 1),
    ]


def test_lateness_is_judged_against_the_combined_watermark_not_the_rows_split():
    # split 0: 5000, 1200, 500   split 1: 1500, 1600, 1700
    # 1200 is behind its own split's watermark (4999) but not behind the combined
    # one (min(4999, 1499) = 1499): it counts. 500 arrives at combined 1599: late.
    src = one_per_batch(5000, 1500, 1200, 1600, 500, 1700)
    got = run_tumbling(src, parallelism=2)
    assert late_ts(got) == [500]
    assert windows(got) == [(1000, 2000, 4), (5000, 6000, 1)]


def test_two_splits_in_one_subtask_combine_by_minimum():
    src = ScriptedSource(
        [[ev(5000)], [ev(1200)], [ev(500)]],
        [[ev(1500)], [ev(1600)], [ev(1700)]],
    )
    got = run_tumbling(src, parallelism=1)
    assert late_ts(got) == [500]
    assert windows(got) == [(1000, 2000, 4), (5000, 6000, 1)]


def test_a_split_that_has_read_nothing_yet_holds_the_watermark_back():
    # split 1 reads its first batch only after split 0 read everything
    src = ScriptedSource(
        [[ev(1000)], [ev(5000)], [ev(9000)]],
        [(100, [ev(10)]), (100, [ev(20)])],
    )
    got = run_tumbling(src, parallelism=1)
    assert late_ts(got) == []
    assert windows(got) == [(0, 1000, 2), (1000, 2000, 1), (5000, 6000, 1), (9000, 10_000, 1)]


def test_union_watermark_is_the_minimum_of_its_inputs():
    flow = sl.Flow("union")
    out, late = sl.sinks.collect(), sl.sinks.collect()
    fast = flow.source(one_per_batch(5000, 6000, 7000), time="ts", name="fast")
    slow = flow.source(one_per_batch(100, 200, 300), time="ts", name="slow")
    res = fast.union(slow).key_by("user").window(sl.windows.tumbling("1s")).agg(n=sl.agg.count())
    res.sink(out)
    res.late().sink(late)
    flow.run()
    assert late.to_polars().height == 0
    got = out.to_polars().with_columns(pl.col("window_start").dt.epoch("ms"))
    assert sorted(got.select("window_start", "n").rows()) == [
        (0, 3),
        (5000, 1),
        (6000, 1),
        (7000, 1),
    ]


# -- idleness -----------------------------------------------------------------------------------
class BusySplit(SplitReader):
    """Reads 100, 1500, 2500, then a row at 2600 every 5 ms forever: it is never idle
    and its watermark stays at 2599, so [2000, 3000) never closes."""

    def __init__(self) -> None:
        self.todo = [100, 1500, 2500]
        self.last = 0.0

    def poll(self, max_rows: int) -> ReadBatch | None:
        now = time.monotonic()
        if self.todo:
            return ReadBatch(pl.DataFrame([ev(self.todo.pop(0))]))
        if now - self.last >= 0.005:
            self.last = now
            return ReadBatch(pl.DataFrame([ev(2600, 0)]))
        return None


class SilentSplit(SplitReader):
    """Reads nothing until ``wake()`` is true, then ``rows`` once; never finishes."""

    def __init__(self, wake: Any = None, rows: Rows | None = None) -> None:
        self.wake = wake
        self.rows = rows

    def poll(self, max_rows: int) -> ReadBatch | None:
        if self.rows and self.wake is not None and self.wake():
            rows, self.rows = self.rows, None
            return ReadBatch(pl.DataFrame(rows))
        return None


class OneBusyOneSilent(Source):
    bounded = False
    coalesce = False

    def __init__(self, silent: SilentSplit) -> None:
        self.silent = silent

    def create_splits(self, parallelism: int) -> list[SplitReader]:
        return [BusySplit(), self.silent]


@pytest.mark.parametrize("parallelism", [1, 2], ids=["same-subtask", "two-subtasks"])
def test_a_silent_split_stalls_the_watermark_without_idleness(parallelism):
    got = run_tumbling(OneBusyOneSilent(SilentSplit()), parallelism=parallelism, timeout=0.3)
    assert got.stopped
    assert got.out.height == 0


@pytest.mark.parametrize("parallelism", [1, 2], ids=["same-subtask", "two-subtasks"])
def test_an_idle_split_leaves_the_minimum_and_windows_fire(parallelism):
    got = run_tumbling(
        OneBusyOneSilent(SilentSplit()),
        watermark=sl.monotonous().with_idleness("50ms"),
        parallelism=parallelism,
        timeout=0.5,
    )
    assert got.stopped
    # the busy split's watermark is 2599: [2000, 3000) stays open
    assert windows(got) == [(0, 1000, 1), (1000, 2000, 1)]


@pytest.mark.parametrize("parallelism", [1, 2], ids=["same-subtask", "two-subtasks"])
def test_an_idle_split_that_resumes_does_not_move_the_watermark_back(parallelism):
    # the silent split wakes up once both windows have fired (so it was idle),
    # with a row at 50: the combined watermark stays at 2599, the row is late
    out = sl.sinks.collect()
    silent = SilentSplit(wake=lambda: len(out) >= 2, rows=[ev(50, 7)])
    got = run_tumbling(
        OneBusyOneSilent(silent),
        watermark=sl.monotonous().with_idleness("50ms"),
        parallelism=parallelism,
        timeout=0.5,
        out=out,
    )
    assert windows(got) == [(0, 1000, 1), (1000, 2000, 1)]
    assert got.late.select("ts", "amount").rows() == [(50, 7)]
    assert got.late_dropped == 1


def test_idle_timeout_must_be_positive():
    with pytest.raises(sl.ConfigError):
        sl.bounded_out_of_orderness("1s").with_idleness(0)


# -- end of input -----------------------------------------------------------------------------
def test_end_of_bounded_input_fires_every_pending_window():
    # a one-hour bound: only the last row (far in the future) closes the earlier
    # windows; its own window is pending until the end of input
    src = sl.sources.memory([ev(t) for t in (-(10**9), 0, 5_000, 10**12)], batch_size=1)
    got = run_tumbling(src, watermark="1h")
    assert late_ts(got) == []
    assert windows(got) == [
        (-(10**9), -(10**9) + 1000, 1),
        (0, 1000, 1),
        (5000, 6000, 1),
        (10**12, 10**12 + 1000, 1),
    ]


def test_end_of_bounded_input_fires_pending_sessions_and_sliding_windows():
    src = sl.sources.memory([ev(0), ev(400), ev(10_000)], batch_size=3)
    sessions = run_tumbling(src, window=sl.windows.session("1s"), watermark="1h")
    assert windows(sessions) == [(0, 1400, 2), (10_000, 11_000, 1)]
    sliding = run_tumbling(src, window=sl.windows.sliding("1s", "500ms"), watermark="1h")
    assert windows(sliding) == [
        (-500, 500, 2),
        (0, 1000, 2),
        (9500, 10_500, 1),
        (10_000, 11_000, 1),
    ]


def test_end_of_input_of_one_split_does_not_close_windows_of_the_other():
    # split 0 ends early; split 1 keeps the watermark where it is
    src = ScriptedSource([[ev(9000)]], [[ev(100)], [ev(200)], [ev(900)]])
    got = run_tumbling(src)
    assert late_ts(got) == []
    assert windows(got) == [(0, 1000, 3), (9000, 10_000, 1)]


def test_stopping_an_unbounded_job_does_not_fire_open_windows():
    src = ScriptedSource([[ev(100)], [ev(200)]], bounded=False)
    got = run_tumbling(src, timeout=0.2)
    assert got.stopped
    assert got.out.height == 0


# -- configuration ----------------------------------------------------------------------------
def test_event_time_windows_need_an_event_time_column():
    flow = sl.Flow("no-time")
    with pytest.raises(sl.ConfigError):
        flow.source([ev(1)]).key_by("user").window(sl.windows.tumbling("1s"))


def test_a_watermark_needs_an_event_time_column():
    flow = sl.Flow("no-time")
    with pytest.raises(sl.ConfigError):
        flow.source([ev(1)], watermark="1s")
