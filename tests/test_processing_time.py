"""Processing-time windows and periodic early firings use the machine clock."""

from __future__ import annotations

import threading
import time

import polars as pl

import sluice as sl


def _slow_rows(n: int, every: float):
    for i in range(n):
        yield {"k": "a", "v": i}
        time.sleep(every)


def test_processing_time_tumbling_windows_fire_on_the_clock():
    flow = sl.Flow("pt")
    out = sl.sinks.collect()
    src = sl.sources.IteratorSource(_slow_rows(30, 0.01), bounded=True)
    flow.source(src).key_by("k").window(sl.windows.tumbling("100ms", time="processing")).agg(
        n=sl.agg.count(), s=sl.agg.sum("v")
    ).sink(out)
    flow.run(timeout=10)
    df = out.to_polars()
    # ~0.3 s of input in 100 ms windows: several windows, every row counted once
    assert df.height >= 2
    assert df["n"].sum() == 30 and df["s"].sum() == sum(range(30))
    starts = df["window_start"].cast(pl.Int64)
    assert (starts % 100 == 0).all()


def test_periodic_early_firing_emits_partial_results_before_the_window_closes():
    flow = sl.Flow("early")
    out = sl.sinks.collect()
    # one event-time window that never closes while the source runs
    rows = ({"k": "a", "ts": 1000 + i, "v": 1} for i in range(1000))

    def slow():
        for r in rows:
            yield r
            time.sleep(0.0005)

    src = sl.sources.IteratorSource(slow(), bounded=False)
    flow.source(src, time="ts").key_by("k").window(
        sl.windows.tumbling("1h"), trigger=sl.triggers.every("50ms")
    ).agg(n=sl.agg.count()).sink(out)
    stopper = threading.Timer(0.6, flow.stop)
    stopper.start()
    flow.run(timeout=10)
    stopper.join()
    counts = out.to_polars()["n"].to_list()
    assert len(counts) >= 3, counts  # several early firings
    assert counts == sorted(counts)  # accumulating
    assert all(0 < c <= 1000 for c in counts)
