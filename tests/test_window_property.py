"""Property tests: the streaming engine agrees with a batch computation.

1. No late data: random keys, times and values, out of order by at most the
   watermark bound; random window kind, batch size and parallelism. The engine's
   results equal the same query computed over the whole input at once (Polars
   for tumbling and sliding windows, a plain-Python sessionizer for sessions).
2. Late data: single split, known batch boundaries, times in any order. A plain
   Python simulation of docs/event-time.md (watermark per batch, lateness per
   window, allowed lateness, re-firing, cleanup, end of input) gives exactly the
   rows the engine must emit and the rows it must send to ``.late()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import polars as pl
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import sluice as sl

MIN = -(2**63)
# Derandomized so that every run tries the same examples. Shrinking a failure
# runs the engine thousands of times; it is off unless SLUICE_SHRINK=1.
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
if os.environ.get("SLUICE_SHRINK") == "1":
    _PHASES.append(Phase.shrink)
SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, phases=_PHASES)


# -- window kinds as data ---------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    name: str  # tumbling | sliding | session | dynamic_session
    size: int = 0  # tumbling/sliding size, or session gap
    slide: int = 0
    offset: int = 0

    def spec(self) -> Any:
        if self.name == "tumbling":
            return sl.windows.tumbling(self.size, offset=self.offset)
        if self.name == "sliding":
            return sl.windows.sliding(self.size, self.slide, offset=self.offset)
        if self.name == "session":
            return sl.windows.session(self.size)
        return sl.windows.session(sl.col("gap"))

    def assign(self, t: int) -> list[tuple[int, int]]:
        """Fixed windows of an event (docs/event-time.md, "Window assignment")."""
        step = self.size if self.name == "tumbling" else self.slide
        last = t - (t - self.offset) % step  # Python's % is a true modulo
        out = []
        w = last
        while w > t - self.size:
            out.append((w, w + self.size))
            w -= step
        return out


tumbling = st.integers(1, 1000).flatmap(
    lambda size: st.builds(
        Kind, st.just("tumbling"), st.just(size), st.just(0), st.integers(0, size - 1)
    )
)
sliding = st.integers(1, 300).flatmap(
    lambda slide: st.builds(
        Kind,
        st.just("sliding"),
        st.integers(slide, 4 * slide),
        st.just(slide),
        st.integers(0, slide - 1),
    )
)
session = st.builds(Kind, st.just("session"), st.integers(1, 500))
dynamic_session = st.just(Kind("dynamic_session"))


# -- running the engine ---------------------------------------------------------------------------
@dataclass
class Run:
    out: list[tuple[Any, ...]]  # (user, window_start, window_end, n, total, lo, hi)
    late: list[tuple[Any, ...]]  # (user, ts, v, seq)
    late_dropped: int


def run_engine(
    rows: list[dict[str, Any]],
    kind: Kind,
    *,
    delay: int,
    lateness: int = 0,
    batch_size: int,
    parallelism: int,
) -> Run:
    flow = sl.Flow("property", parallelism=parallelism)
    out, late = sl.sinks.collect(), sl.sinks.collect()
    schema = {"user": pl.String, "ts": pl.Int64, "v": pl.Int64, "gap": pl.Int64, "seq": pl.Int64}
    res = (
        flow.source(
            sl.sources.memory(pl.DataFrame(rows, schema=schema), batch_size=batch_size),
            time="ts",
            watermark=sl.bounded_out_of_orderness(delay),
        )
        .key_by("user")
        .window(kind.spec(), allowed_lateness=lateness)
        .agg(n=sl.agg.count(), total=sl.agg.sum("v"), lo=sl.agg.min("v"), hi=sl.agg.max("v"))
    )
    res.sink(out)
    res.late().sink(late)
    job = flow.run()
    got = out.to_polars()
    got_rows = (
        sorted(
            got.select(
                "user",
                pl.col("window_start").dt.epoch("ms"),
                pl.col("window_end").dt.epoch("ms"),
                "n",
                "total",
                "lo",
                "hi",
            ).rows()
        )
        if got.height
        else []
    )
    lt = late.to_polars()
    late_rows = sorted(lt.select("user", "ts", "v", "seq").rows()) if lt.height else []
    return Run(got_rows, late_rows, job.metrics["window"].late_dropped)


# -- references -------------------------------------------------------------------------------------
def polars_reference(rows: list[dict[str, Any]], kind: Kind) -> list[tuple[Any, ...]]:
    """Tumbling/sliding windows over the whole input with Polars."""
    step = kind.size if kind.name == "tumbling" else kind.slide
    df = pl.DataFrame(rows).with_columns(
        last=pl.col("ts") - (pl.col("ts") - kind.offset) % step  # Polars' % is a true modulo
    )
    df = df.with_columns(
        window_start=pl.int_ranges(pl.col("last"), pl.col("ts") - kind.size, -step)
    ).explode("window_start")
    res = df.group_by("user", "window_start").agg(
        window_end=pl.col("window_start").first() + kind.size,
        n=pl.len().cast(pl.Int64),
        total=pl.col("v").sum(),
        lo=pl.col("v").min(),
        hi=pl.col("v").max(),
    )
    return sorted(res.select("user", "window_start", "window_end", "n", "total", "lo", "hi").rows())


def session_reference(rows: list[dict[str, Any]], kind: Kind) -> list[tuple[Any, ...]]:
    """Sessions over the whole input: sort by start, merge windows that intersect or touch."""
    out = []
    by_key: dict[str, list[tuple[int, int, int]]] = {}
    for r in rows:
        gap = kind.size if kind.name == "session" else r["gap"]
        by_key.setdefault(r["user"], []).append((r["ts"], r["ts"] + gap, r["v"]))
    for user, wins in by_key.items():
        wins.sort()
        cur: list[Any] = []
        for s, e, v in wins:
            if cur and s <= cur[1]:
                cur[1] = max(cur[1], e)
                cur[2].append(v)
            else:
                if cur:
                    out.append(cur)
                cur = [s, e, [v], user]
        out.append(cur)
    return sorted((u, s, e, len(vs), sum(vs), min(vs), max(vs)) for s, e, vs, u in out)


# -- property 1: no late data ------------------------------------------------------------------------
@st.composite
def in_order_within_bound(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 40))
    delay = draw(st.sampled_from([0, 1, 50, 300]))
    start = draw(st.integers(-5000, 5000))
    steps = draw(st.lists(st.integers(0, 200), min_size=n, max_size=n))
    jitter = draw(st.lists(st.integers(0, delay), min_size=n, max_size=n))
    users = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    values = draw(st.lists(st.integers(-100, 100), min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(1, 300), min_size=n, max_size=n))
    # each time is at most `delay` behind the largest time before it, so it is
    # never behind the watermark (max seen - delay - 1)
    bases = list(accumulate(steps, initial=start))[1:]
    rows = [
        {"user": u, "ts": b - j, "v": v, "gap": g, "seq": i}
        for i, (u, b, j, v, g) in enumerate(zip(users, bases, jitter, values, gaps, strict=True))
    ]
    return {
        "rows": rows,
        "delay": delay,
        "kind": draw(st.one_of(tumbling, sliding, session, dynamic_session)),
        "batch_size": draw(st.integers(1, 8)),
        "parallelism": draw(st.sampled_from([1, 2, 4])),
    }


@SETTINGS
@given(in_order_within_bound())
def test_windows_without_late_data_equal_the_batch_result(case):
    rows, kind = case["rows"], case["kind"]
    got = run_engine(
        rows,
        kind,
        delay=case["delay"],
        batch_size=case["batch_size"],
        parallelism=case["parallelism"],
    )
    if kind.name in ("tumbling", "sliding"):
        expected = polars_reference(rows, kind)
    else:
        expected = session_reference(rows, kind)
    assert got.late == [] and got.late_dropped == 0
    assert got.out == expected


# -- property 2: late data ------------------------------------------------------------------------
@dataclass
class _Win:
    start: int
    end: int
    values: list[int] = field(default_factory=list)
    dirty: bool = True


def simulate(
    rows: list[dict[str, Any]], kind: Kind, *, delay: int, lateness: int, batch_size: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What docs/event-time.md says one split read in batches of ``batch_size`` gives:
    (every emitted result row, every late row). Elements are handled one by one in
    arrival order; the watermark moves after each batch (max seen - delay - 1)."""
    wm = MIN
    state: dict[str, list[_Win]] = {}
    emitted: list[tuple[Any, ...]] = []
    late: list[tuple[Any, ...]] = []

    def is_late(end: int) -> bool:
        return wm > MIN and end - 1 + lateness <= wm

    def fire(at: int, final: bool = False) -> None:
        for user, wins in state.items():
            for w in wins:
                if w.dirty and (final or w.end - 1 <= at):
                    vs = w.values
                    emitted.append((user, w.start, w.end, len(vs), sum(vs), min(vs), max(vs)))
                    w.dirty = False
            if not final:
                wins[:] = [w for w in wins if w.end - 1 + lateness > at]

    def add_fixed(r: dict[str, Any]) -> bool:
        wins = state.setdefault(r["user"], [])
        accepted = False
        for s, e in kind.assign(r["ts"]):
            if is_late(e):
                continue  # dropped from this window only
            w = next((w for w in wins if w.start == s), None)
            if w is None:
                w = _Win(s, e)
                wins.append(w)
            w.values.append(r["v"])
            w.dirty = True
            accepted = True
        return accepted

    def add_session(r: dict[str, Any]) -> bool:
        wins = state.setdefault(r["user"], [])
        s, e = r["ts"], r["ts"] + kind.size
        touching = [w for w in wins if w.start <= e and w.end >= s]
        ms = min([s, *(w.start for w in touching)])
        me = max([e, *(w.end for w in touching)])
        if is_late(me):  # Flink checks lateness on the merged window
            return False
        merged = _Win(ms, me, [v for w in touching for v in w.values] + [r["v"]])
        wins[:] = [w for w in wins if w not in touching] + [merged]
        return True

    add = add_session if kind.name == "session" else add_fixed
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size]
        for r in batch:
            if not add(r):
                late.append((r["user"], r["ts"], r["v"], r["seq"]))
        fire(wm)  # late-but-allowed updates fire again at once
        new = max(r["ts"] for r in batch) - delay - 1
        if new > wm:
            wm = new
            fire(wm)
    fire(0, final=True)  # end of input: the maximum watermark
    return sorted(emitted), sorted(late)


@st.composite
def any_order(draw: Any, kinds: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 30))
    times = draw(st.lists(st.integers(-3000, 3000), min_size=n, max_size=n))
    users = draw(st.lists(st.sampled_from("ab"), min_size=n, max_size=n))
    values = draw(st.lists(st.integers(-100, 100), min_size=n, max_size=n))
    rows = [
        {"user": u, "ts": t, "v": v, "gap": 1, "seq": i}
        for i, (u, t, v) in enumerate(zip(users, times, values, strict=True))
    ]
    return {
        "rows": rows,
        "kind": draw(kinds),
        "delay": draw(st.sampled_from([0, 50, 300])),
        "lateness": draw(st.sampled_from([0, 100, 1000])),
        "batch_size": draw(st.integers(1, 5)),
    }


def _check_against_simulation(case: dict[str, Any]) -> None:
    rows, kind = case["rows"], case["kind"]
    kw = {"delay": case["delay"], "lateness": case["lateness"], "batch_size": case["batch_size"]}
    expected_out, expected_late = simulate(rows, kind, **kw)
    got = run_engine(rows, kind, parallelism=1, **kw)
    assert got.late == expected_late
    assert got.late_dropped == len(expected_late)
    assert got.out == expected_out


@SETTINGS
@given(any_order(st.one_of(tumbling, sliding)))
def test_late_data_in_fixed_windows_matches_the_simulated_semantics(case):
    _check_against_simulation(case)


@st.composite
def trailing_sessions(draw: Any) -> dict[str, Any]:
    """Times trend upwards slower than the gap; rows trail the maximum by up to
    three gaps. Late rows then often touch kept sessions and other rows of their
    own batch, so that merging and lateness interact."""
    gap = draw(st.integers(50, 300))
    n = draw(st.integers(2, 25))
    steps = draw(st.lists(st.integers(0, gap // 2), min_size=n, max_size=n))
    trail = draw(st.lists(st.integers(0, 3 * gap), min_size=n, max_size=n))
    users = draw(st.lists(st.sampled_from("aaab"), min_size=n, max_size=n))
    bases = list(accumulate(steps))
    rows = [
        {"user": u, "ts": b - j, "v": i % 7 - 3, "gap": 1, "seq": i}
        for i, (u, b, j) in enumerate(zip(users, bases, trail, strict=True))
    ]
    return {
        "rows": rows,
        "kind": Kind("session", gap),
        "delay": draw(st.sampled_from([0, gap // 4])),
        "lateness": draw(st.sampled_from([0, gap // 2, 1000])),
        "batch_size": draw(st.integers(2, 5)),
    }


@settings(SETTINGS, max_examples=100)
@given(st.one_of(trailing_sessions(), any_order(session)))
def test_late_data_in_sessions_matches_the_simulated_semantics(case):
    _check_against_simulation(case)


# -- the simulation itself, on the examples of docs/event-time.md -------------------------------
def test_simulation_refires_late_but_allowed_updates_and_drops_the_rest():
    rows = [
        {"user": "a", "ts": t, "v": v, "gap": 1, "seq": i}
        for i, (t, v) in enumerate([(100, 1), (1200, 2), (300, 3), (2600, 4), (500, 5)])
    ]
    out, late = simulate(rows, Kind("tumbling", 1000), delay=0, lateness=1000, batch_size=1)
    assert out == [
        ("a", 0, 1000, 1, 1, 1, 1),
        ("a", 0, 1000, 2, 4, 1, 3),
        ("a", 1000, 2000, 1, 2, 2, 2),
        ("a", 2000, 3000, 1, 4, 4, 4),
    ]
    assert late == [("a", 500, 5, 4)]


def test_simulation_merges_a_late_event_into_an_open_session():
    rows = [
        {"user": "a", "ts": t, "v": 1, "gap": 1, "seq": i} for i, t in enumerate([3000, 3500, 2000])
    ]
    out, late = simulate(rows, Kind("session", 1000), delay=0, lateness=0, batch_size=1)
    assert out == [("a", 2000, 4500, 3, 3, 1, 1)]
    assert late == []


def test_reference_assignment_of_sliding_windows():
    assert Kind("sliding", 2500, 1000).assign(999) == [(0, 2500), (-1000, 1500)]
    assert Kind("sliding", 2500, 1000).assign(1000) == [(1000, 3500), (0, 2500), (-1000, 1500)]
    assert Kind("tumbling", 1000, offset=300).assign(-701) == [(-1700, -700)]
