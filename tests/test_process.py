"""Keyed process functions: state per key, event-time and processing-time timers."""

from __future__ import annotations

import polars as pl

import sluice as sl
from tests.helpers import run_collect


class SessionAlert(sl.KeyedProcessFunction):
    """Emit a user's total 1 s (event time) after their last event."""

    def process_element(self, row, ctx):
        total = ctx.value_state("total", 0)
        total.update(total.value() + row["v"])
        last = ctx.value_state("timer")
        if last.value() is not None:
            ctx.delete_event_time_timer(last.value())
        last.update(ctx.timestamp + 1000)
        ctx.register_event_time_timer(ctx.timestamp + 1000)

    def on_timer(self, timestamp, ctx):
        yield {"user": ctx.key, "total": ctx.value_state("total").value(), "fired_at": timestamp}
        ctx.value_state("total").clear()
        ctx.value_state("timer").clear()


def test_event_time_timers_fire_in_order_with_state_per_key():
    rows = [
        {"user": "a", "ts": 0, "v": 1},
        {"user": "b", "ts": 100, "v": 5},
        {"user": "a", "ts": 500, "v": 2},
        {"user": "a", "ts": 3000, "v": 7},
        {"user": "b", "ts": 3100, "v": 1},
    ]
    # one row per batch: the watermark (max seen - 1) passes 1100 only after a@3000,
    # which arrives before a's timer at 1500 could fire, so a's total keeps growing
    got = run_collect(
        lambda f: (
            f.source(sl.sources.memory(rows, batch_size=1), time="ts")
            .key_by("user")
            .process(SessionAlert())
        ),
    )
    assert got.rows() == [("b", 5, 1100), ("a", 10, 4000), ("b", 1, 4100)]


def test_timer_registered_twice_fires_once():
    class Twice(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            ctx.register_event_time_timer(10_000)
            ctx.register_event_time_timer(10_000)

        def on_timer(self, timestamp, ctx):
            yield {"k": ctx.key, "t": timestamp}

    got = run_collect(
        lambda f: (
            f.source([{"k": 1, "ts": 1}, {"k": 1, "ts": 2}], time="ts").key_by("k").process(Twice())
        )
    )
    assert got.rows() == [(1, 10_000)]


def test_list_and_map_state():
    class Hist(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            seen = ctx.list_state("seen")
            seen.add(row["v"])
            counts = ctx.map_state("counts")
            counts.put(row["v"], (counts.get(row["v"]) or 0) + 1)
            yield {"k": ctx.key, "n": len(seen.get()), "same": counts.get(row["v"])}

    rows = [{"k": "x", "v": 1}, {"k": "x", "v": 1}, {"k": "y", "v": 2}, {"k": "x", "v": 3}]
    got = run_collect(lambda f: f.source(rows).key_by("k").process(Hist()))
    assert got.rows() == [("x", 1, 1), ("x", 2, 2), ("y", 1, 1), ("x", 3, 1)]


def test_processing_time_timer_fires():
    class Later(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            ctx.register_processing_time_timer(ctx.processing_time() + 20)

        def on_timer(self, timestamp, ctx):
            yield {"k": ctx.key}

    flow = sl.Flow("pt")
    out = sl.sinks.collect()
    src = sl.sources.IteratorSource(iter([{"k": "a"}, {"k": "b"}]), bounded=False)
    flow.source(src).key_by("k").process(Later()).sink(out)
    import threading
    import time

    t = threading.Thread(target=lambda: (time.sleep(0.5), flow.stop()))
    t.start()
    flow.run(timeout=5)
    t.join()
    assert sorted(out.to_polars()["k"].to_list()) == ["a", "b"]


def test_dedup_keeps_first_within_bound():
    rows = [
        {"id": 1, "ts": 0},
        {"id": 1, "ts": 500},  # dup (within 1s)
        {"id": 2, "ts": 600},
        {"id": 1, "ts": 1500},  # 1500 ms after first: kept
        {"id": 2, "ts": 1599},  # 999 ms after 600: dup
        {"id": 1, "ts": 2000},  # 500 after 1500: dup
    ]
    for bs in (1, 2, 100):
        for p in (1, 2):
            got = run_collect(
                lambda f, bs=bs: (
                    f.source(sl.sources.memory(rows, batch_size=bs), time="ts")
                    .key_by("id")
                    .dedup(within="1s")
                ),
                parallelism=p,
            )
            assert sorted(got.rows()) == [(1, 0), (1, 1500), (2, 600)], (bs, p)


def test_dedup_matches_reference_on_random_data():
    import random

    rnd = random.Random(7)
    rows = []
    t = 0
    for _ in range(3000):
        t += rnd.randint(0, 30)
        rows.append({"id": rnd.randint(0, 50), "ts": t})
    # reference: sequential scan
    first: dict[int, int] = {}
    want = []
    for r in rows:
        f = first.get(r["id"])
        if f is None or abs(r["ts"] - f) >= 1000:
            first[r["id"]] = r["ts"]
            want.append((r["id"], r["ts"]))
    got = run_collect(
        lambda f: (
            f.source(sl.sources.memory(pl.DataFrame(rows), batch_size=97), time="ts")
            .key_by("id")
            .dedup(within="1s")
        ),
        parallelism=2,
    )
    assert sorted(got.rows()) == sorted(want)


def test_each_subtask_gets_its_own_function_instance():
    class Counter(sl.KeyedProcessFunction):
        def open(self, ctx):
            self.seen = 0  # per-subtask attribute

        def process_element(self, row, ctx):
            self.seen += 1
            yield {"k": row["k"], "seen_by_this_subtask": self.seen}

    rows = [{"k": i % 8} for i in range(80)]
    got = run_collect(lambda f: f.source(rows).key_by("k").process(Counter()), parallelism=4)
    # with a shared instance the counters of all subtasks would add up to 80
    assert got["seen_by_this_subtask"].max() < 80
    assert got.height == 80
