"""Clicks per user per minute: the demo that ``make demo`` runs.

    sluice run examples/clicks.py      # or: python examples/clicks.py

On import it writes ``demo-out/clicks.jsonl`` (200,000 click-stream events, the
same every time; skipped when the file is already there). The flow reads it with
event time from ``ts``, tolerates 5 s of out-of-orderness, counts each user's
clicks and their amount per 1-minute tumbling window, accepts stragglers for
30 s after a window closed (the window fires again with the updated result),
writes the results to ``demo-out/clicks_per_minute/`` as Parquet, and the rows
that came too late even for that to ``demo-out/late_clicks.jsonl``. Loading the
file also empties ``demo-out/clicks_per_minute/``, so that each run replaces the
results of the previous one.

A window that received late clicks within the allowed lateness appears more
than once in the results, each time with a larger count: keep the last row per
``(user, window_start)`` for the final numbers (as the ``__main__`` block does).
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

import sluice as sl

OUT = Path("demo-out")
CLICKS = OUT / "clicks.jsonl"
RESULTS = OUT / "clicks_per_minute"
LATE = OUT / "late_clicks.jsonl"


def generate_clicks(path: Path, *, n: int = 200_000, seed: int = 7) -> Path:
    """Write ``n`` click-stream events to ``path`` as JSON lines, in arrival order.

    Deterministic for a given ``seed``, and idempotent: an existing file is kept.
    Events arrive a little after they happen (a few hundred ms); 3% are held up
    2-20 s (out of order, some beyond the 5 s watermark bound) and 0.1% turn up
    2-10 minutes late. Amounts are multiples of 0.25 so that sums are exact in
    floating point, whatever the order of addition.
    """
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    start = int(datetime(2024, 5, 1, 9, 0, tzinfo=UTC).timestamp() * 1000)
    arrival = start + np.cumsum(rng.exponential(18.0, n))  # ~1 hour of traffic
    delay = rng.exponential(300.0, n)
    held = rng.random(n) < 0.03
    delay[held] = rng.uniform(2_000, 20_000, held.sum())
    very_late = rng.random(n) < 0.001
    delay[very_late] = rng.uniform(120_000, 600_000, very_late.sum())
    n_users = 1_000
    activity = 1.0 / np.arange(1, n_users + 1) ** 0.8  # a few users are very active
    kinds = np.array(["view", "click", "purchase"])
    events = pl.DataFrame(
        {
            "event_id": np.arange(n),
            "ts": (arrival - delay).astype(np.int64),
            "user": rng.choice(n_users, size=n, p=activity / activity.sum()),
            "kind": kinds[rng.choice(3, size=n, p=[0.6, 0.35, 0.05])],
            "amount": np.clip(np.round(rng.lognormal(3.0, 0.8, n) * 4) / 4, 0.25, 2_000.0),
        }
    ).with_columns(
        pl.from_epoch("ts", time_unit="ms").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
        pl.format("u{}", pl.col("user").cast(pl.String).str.zfill(4)).alias("user"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    events.write_ndjson(tmp)
    os.replace(tmp, path)  # readers never see a half-written file
    return path


generate_clicks(CLICKS)
# every run starts from clean outputs (a directory sink adds part files to what is there)
shutil.rmtree(RESULTS, ignore_errors=True)

flow = sl.Flow("clicks")
clicks = flow.source(
    sl.sources.jsonl(CLICKS), time="ts", watermark=sl.bounded_out_of_orderness("5s")
)
per_minute = (
    clicks.filter(sl.col("kind") == "click")
    .key_by("user")
    .window(sl.windows.tumbling("1m"), allowed_lateness="30s")
    .agg(n=sl.agg.count(), spent=sl.agg.sum("amount"))
)
per_minute.sink(sl.sinks.parquet(RESULTS))
per_minute.late().sink(sl.sinks.jsonl(LATE))


if __name__ == "__main__":
    result = flow.run()
    print(f"finished in {result.elapsed_s:.2f} s")
    print(f"late clicks dropped: {result.metrics['window'].late_dropped} (see {LATE})")
    final = pl.read_parquet(RESULTS).sort("n").unique(["user", "window_start"], keep="last")
    top = final.sort("n", "window_start", descending=[True, False])
    print(f"busiest user-minutes (from {RESULTS}/):")
    print(top.head(5))
