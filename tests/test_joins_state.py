"""Join state: TTL expiry, and checkpoints restored at another parallelism."""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice.connectors.sources.memory import _FrameSplit
from sluice.operators.base import Clock, Metrics, OperatorContext, Target, TimerService
from sluice.operators.join_regular import RegularJoinOperator
from sluice.runtime.messages import TIME, Barrier
from tests.helpers import StopAfter, same_rows
from tests.test_joins import gen_left, gen_right, sql


class _Out(Target):
    def __init__(self) -> None:
        self.batches: list[pl.DataFrame] = []

    def push_batch(self, batch: pl.DataFrame) -> None:
        self.batches.append(batch)

    def push_watermark(self, time: int) -> None: ...
    def push_idle(self, idle: bool) -> None: ...
    def push_end(self) -> None: ...
    def push_barrier(self, barrier: Barrier) -> None: ...

    def rows(self) -> list[dict[str, Any]]:
        return pl.concat(self.batches).to_dicts() if self.batches else []


class _FakeClock(Clock):
    def __init__(self) -> None:
        self.t = 0

    def now(self) -> int:
        return self.t


def _open(op: RegularJoinOperator, clock: Clock | None = None) -> _Out:
    out = _Out()
    op.output.main.append(out)
    op.open(OperatorContext("join", 0, 1, TimerService(clock or Clock()), Metrics()))
    return out


# -- TTL ------------------------------------------------------------------------------
def test_event_time_ttl_drops_state_by_the_watermark() -> None:
    op = RegularJoinOperator("join", ["k"], ["k"], "_r", 10_000, event_time=True)
    out = _open(op)
    op.push_side(0, pl.DataFrame({"k": [1, 2], "x": [1, 2], TIME: [0, 5_000]}))
    op.push_side(1, pl.DataFrame({"k": [1], "y": [10], TIME: [9_000]}))
    assert [r["x"] for r in out.rows()] == [1]
    op.push_watermark(10_000)  # left k=1 (t=0) expires at 0 + 10s <= watermark
    assert op.state_rows() == (1, 1)
    op.push_side(1, pl.DataFrame({"k": [1, 2], "y": [11, 12], TIME: [12_000, 12_000]}))
    assert [(r["x"], r["y"]) for r in out.rows()] == [(1, 10), (2, 12)]
    op.push_watermark(20_000)
    assert op.state_rows() == (0, 2)  # right row at 9s expired; those at 12s live until 22s


def test_processing_time_ttl_never_returns_expired_rows() -> None:
    clock = _FakeClock()
    op = RegularJoinOperator("join", ["k"], ["k"], "_r", 1_000, event_time=False)
    out = _open(op, clock)
    op.push_side(0, pl.DataFrame({"k": [1], "x": [1]}))
    clock.t = 999
    op.push_side(1, pl.DataFrame({"k": [1], "y": [1]}))
    clock.t = 1_000  # the left row expired now, with no watermark or timer
    op.push_side(1, pl.DataFrame({"k": [1], "y": [2]}))
    assert out.rows() == [{"k": 1, "x": 1, "y": 1}]
    assert op.state_rows() == (0, 2)


@pytest.mark.parametrize("ttl", [50, 200])
def test_event_time_ttl_matches_a_brute_force_reference(ttl: int) -> None:
    # one source feeds both sides, one row per batch: the watermark before row i
    # is max(t[:i]) - 1, and row i matches earlier rows j of the other side with
    # the same key while t[j] + ttl > that watermark
    r = random.Random(ttl)
    rows = [
        {"side": i % 3 % 2, "k": r.randrange(4), "t": i * 7 + r.randrange(30), "i": i}
        for i in range(300)
    ]
    flow = sl.Flow("ttl")
    out = sl.sinks.collect()
    s = flow.source(sl.sources.memory(rows, batch_size=1), time="t", watermark="40ms")
    a = s.filter(pl.col("side") == 0).select("k", "i")
    b = s.filter(pl.col("side") == 1).select("k", "i")
    a.join(b, on="k", ttl=ttl).sink(out)
    flow.run()
    want = []
    hi = None
    for n, row in enumerate(rows):
        wm = -(2**63) if hi is None else hi - 40 - 1
        for prev in rows[:n]:
            if prev["side"] != row["side"] and prev["k"] == row["k"] and prev["t"] + ttl > wm:
                lrow, rrow = (row, prev) if row["side"] == 0 else (prev, row)
                want.append({"k": row["k"], "i": lrow["i"], "i_right": rrow["i"]})
        hi = row["t"] if hi is None else max(hi, row["t"])
    got = out.to_polars()
    assert 0 < got.height < len(rows) ** 2 // 16
    assert same_rows(got, pl.DataFrame(want))


# -- checkpoints and rescaling ------------------------------------------------------------
class _Files(sl.sources.MemorySource):
    """Splits that do not depend on the parallelism (like files)."""

    def __init__(self, df: pl.DataFrame) -> None:
        super().__init__(df, batch_size=20)

    def create_splits(self, parallelism: int) -> list[Any]:
        return [_FrameSplit(self.frame, i, 4, self.batch_size) for i in range(4)]


LEFT = gen_left(1_500, 30, 41, 20_000)
RIGHT = gen_right(1_500, 30, 42, 20_000)


def _build(f: sl.Flow, kind: str) -> sl.Stream:
    ls = f.source(_Files(LEFT), time="t")
    rs = f.source(_Files(RIGHT), time="t")
    if kind == "regular":
        return ls.join(rs, left_on="k", right_on="key")
    if kind.startswith("interval"):
        how = "inner" if kind == "interval_inner" else "full"
        return ls.interval_join(rs, left_on="k", right_on="key", lower=-300, upper=200, how=how)
    tw = sl.windows.sliding(1_000, 500)
    return ls.assign_windows(tw).window_join(
        rs.assign_windows(tw), left_on="k", right_on="key", how="full"
    )


@pytest.mark.parametrize("kind", ["regular", "interval", "interval_inner", "window"])
def test_stop_and_resume_at_other_parallelism_gives_the_failure_free_output(tmp_path, kind):
    ref = sl.sinks.collect()
    f = sl.Flow("job")
    _build(f, kind).sink(ref)
    f.run(parallelism=1)
    want = ref.to_polars()
    assert want.height > 500

    parts = []
    plan = [4, 2, 3, 1, 4, 2, 3, 1] * 20
    for attempt, p in enumerate(plan):
        f = sl.Flow("job")
        sink = StopAfter(f, 12 + attempt % 5)
        _build(f, kind).sink(sink)
        res = f.run(parallelism=p, checkpoint_dir=tmp_path, checkpoint_interval=None)
        parts.append(sink.to_polars())
        if not res.stopped:
            break
        assert res.checkpoints, "a stop takes a final checkpoint"
    else:
        pytest.fail("the job never finished")
    assert attempt >= 2, "the job ran at parallelism 4, then 2, then 3"
    got = pl.concat([p for p in parts if p.height], how="diagonal_relaxed")
    assert same_rows(got, want)


def test_regular_join_reference_is_duckdb():
    # the failure-free run the checkpoint test compares with is itself right
    ref = sl.sinks.collect()
    f = sl.Flow("job")
    _build(f, "regular").sink(ref)
    f.run(parallelism=2)
    want = sql(
        "SELECT l.k, l.a, l.t, r.b, r.a AS a_right, r.t AS t_right FROM l JOIN r ON l.k = r.key",
        l=LEFT,
        r=RIGHT,
    )
    assert same_rows(ref.to_polars(), want)
