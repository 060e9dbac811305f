"""End-to-end latency at a fixed input rate (default 100k events/s for 10 s).

A rate-controlled source creates event ``g`` at wall-clock time
``start + g / rate`` and stamps it with that time (``created_ns``) and with the
time the engine actually polled it (``read_ns``). A callback sink records, per row,
``time.time_ns()`` at write time minus those stamps. Because the scheduled
creation time is used, time an event waits for the engine to poll the source
counts against the engine (no coordinated omission).

Pipelines (``--pipeline``, default all):

* ``hash``: filter -> with_columns -> key_by("key") (hash exchange,
  parallelism 2) -> keyed with_columns -> sink (all vectorized);
* ``rebalance``: the same with a vectorized round-robin exchange
  (``.rebalance()``) instead, to separate exchange cost from per-record cost;
* ``window``: filter -> with_columns -> key_by("key") -> 1 s tumbling count/sum
  -> sink. Event time is the creation wall clock, so the watermark passes a
  window's end at about that wall-clock instant; emission latency is sink
  write time minus window end.

    .venv/bin/python bench/latency.py                       # 100k ev/s, 10 s, p=2
    .venv/bin/python bench/latency.py --rate 200000 --seconds 5 --pipeline hash
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

import sluice as sl
from common import measure, print_header, print_table
from sluice.connectors.base import ReadBatch, Sink, SinkWriter, Source, SplitReader

KEYS = 1_000
TARGET_P99_MS = 10.0


# -- a rate-controlled source ----------------------------------------------------------
class _Start:
    """The shared start instant of all splits, fixed at the first poll."""

    def __init__(self) -> None:
        self.ns: int | None = None
        self._lock = threading.Lock()

    def get(self) -> int:
        if self.ns is None:
            with self._lock:
                if self.ns is None:
                    self.ns = time.time_ns()
        return self.ns


class _RateSplit(SplitReader):
    """Events ``g = index, index + n, ...`` of the global sequence, each made
    available when the clock reaches its scheduled time.

    The split's rows are generated up front (at the first poll, once the start
    instant is known) so that a poll costs a zero-copy slice plus the
    ``read_ns`` column: the harness should not eat the engine's time budget.
    """

    def __init__(self, src: RateSource, index: int, n: int) -> None:
        self.src = src
        self.split_id = str(index)
        self.index = index
        self.n = n
        self.pos = 0  # rows of this split handed out so far
        self.rows: pl.DataFrame | None = None
        self.finished = index >= src.total

    def _generate(self, start: int) -> pl.DataFrame:
        src = self.src
        rng = np.random.default_rng(1_000 + self.index)
        g = np.arange(self.index, src.total, self.n, dtype=np.int64)
        created = start + g * 1_000_000_000 // src.rate
        return pl.DataFrame(
            [
                pl.Series("id", g),
                pl.Series("key", rng.integers(0, KEYS, g.size, dtype=np.int64)),
                pl.Series("value", rng.random(g.size)),
                pl.Series("ts", created // 1_000_000),
                pl.Series("created_ns", created),
            ]
        )

    def poll(self, max_rows: int) -> ReadBatch | None:
        src = self.src
        start = src.start.get()
        if self.rows is None:
            self.rows = self._generate(start)
        now = time.time_ns()
        # global events 0..due-1 are due; this split holds every n-th from index
        due = min(src.total, (now - start) * src.rate // 1_000_000_000 + 1)
        mine = max(0, (due - self.index + self.n - 1) // self.n)
        count = min(mine - self.pos, max_rows)
        if count <= 0:
            return None
        first = self.pos
        self.pos += count
        self.finished = self.pos >= self.rows.height
        src.last_read_ns = max(src.last_read_ns, now)
        data = self.rows.slice(first, count).hstack(
            [pl.Series("read_ns", np.full(count, now, dtype=np.int64))]
        )
        return ReadBatch(data, None, first_line=first)


class RateSource(Source):
    """``rate`` events per second of wall clock for ``seconds``, over ``KEYS`` keys.

    Event time (``ts``, ms) is the scheduled creation time; ``created_ns`` and
    ``read_ns`` are the scheduled creation and the actual read wall-clock times.
    """

    name = "rate"
    replayable = False
    bounded = True

    def __init__(self, rate: int, seconds: float) -> None:
        self.rate = int(rate)
        self.total = int(rate * seconds)
        self.start = _Start()
        self.last_read_ns = 0

    def create_splits(self, parallelism: int) -> list[SplitReader]:
        return [_RateSplit(self, i, parallelism) for i in range(parallelism)]


# -- a callback that records latencies at the sink -----------------------------------
@dataclass
class _Samples:
    write_ns: list[np.ndarray] = field(default_factory=list)
    since_created: list[np.ndarray] = field(default_factory=list)
    since_read: list[np.ndarray] = field(default_factory=list)
    created: list[np.ndarray] = field(default_factory=list)
    batches: int = 0
    rows: int = 0
    count_total: int = 0


class LatencyRecorder:
    """Called by ``sl.sinks.callback`` with every output batch; records
    ``now - created_ns`` (and ``now - read_ns``) per row, or for window results
    ``now - window_end``."""

    def __init__(self, windowed: bool) -> None:
        self.windowed = windowed
        self.s = _Samples()
        self._lock = threading.Lock()

    def __call__(self, batch: pl.DataFrame) -> None:
        now = time.time_ns()
        if self.windowed:
            created = batch.get_column("window_end").dt.epoch("ns").to_numpy()
            read = created
        else:
            created = batch.get_column("created_ns").to_numpy()
            read = batch.get_column("read_ns").to_numpy()
        with self._lock:
            s = self.s
            s.write_ns.append(np.full(batch.height, now, dtype=np.int64))
            s.since_created.append(now - created)
            s.since_read.append(now - read)
            s.created.append(created)
            s.batches += 1
            s.rows += batch.height
            if self.windowed:
                s.count_total += int(batch.get_column("n").sum())


class _RecorderWriter(SinkWriter):
    def __init__(self, fn: LatencyRecorder) -> None:
        self.fn = fn

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height:
            self.fn(batch)


class _RecorderSink(Sink):
    """Stand-in for ``sl.sinks.callback`` on engines that do not have it yet."""

    name = "callback"

    def __init__(self, fn: LatencyRecorder) -> None:
        self.fn = fn

    def create_writer(self, subtask: int, parallelism: int) -> SinkWriter:
        return _RecorderWriter(self.fn)


def callback_sink(fn: LatencyRecorder) -> Sink:
    callback = getattr(sl.sinks, "callback", None)
    return callback(fn) if callback is not None else _RecorderSink(fn)


# -- pipelines ---------------------------------------------------------------------------
def build(
    pipeline: str, rate: int, seconds: float, parallelism: int, linger: str | None = None
) -> tuple[sl.Flow, Any]:
    opts = {} if linger is None else {"linger": linger}
    flow = sl.Flow(f"latency-{pipeline}", parallelism=parallelism, **opts)
    src = RateSource(rate, seconds)
    recorder = LatencyRecorder(windowed=pipeline == "window")
    sink = callback_sink(recorder)
    stream = (
        flow.source(src, time="ts", watermark=sl.bounded_out_of_orderness("0s"))
        .filter(sl.col("value") < 0.99)
        .with_columns(
            value_x2=sl.col("value") * 2,
            bucket=sl.col("key") % 10,
        )
    )
    if pipeline == "hash":
        stream.key_by("key").with_columns(keyed=sl.col("key") + 1).sink(sink)
    elif pipeline == "rebalance":
        stream.rebalance().sink(sink)
    else:
        (
            stream.key_by("key")
            .window(sl.windows.tumbling("1s"))
            .agg(n=sl.agg.count(), total=sl.agg.sum("value"))
            .sink(sink)
        )
    return flow, (src, recorder)


@dataclass
class Outcome:
    pipeline: str
    rows: int
    batches: int
    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    read_p99: float
    achieved_rate: float
    cores: float
    kept_up: bool
    note: str


def _ms(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) / 1e6 if a.size else float("nan")


def run_one(pipeline: str, args: argparse.Namespace) -> Outcome:
    flow, (src, recorder) = build(pipeline, args.rate, args.seconds, args.parallelism, args.linger)
    with measure() as t:
        result = flow.run(timeout=args.seconds + 60)
    s = recorder.s
    if not s.rows:
        raise SystemExit(f"{pipeline}: the sink received nothing")
    created = np.concatenate(s.created)
    lat = np.concatenate(s.since_created)
    read_lat = np.concatenate(s.since_read)
    write = np.concatenate(s.write_ns)
    start = src.start.get()
    offered = src.total
    last_event_ns = start + (offered - 1) * 1_000_000_000 // src.rate
    span = (src.last_read_ns - start) / 1e9
    achieved = offered / span if span > 0 else 0.0
    expected = result.metric("filter", "records_out")
    if pipeline == "window":
        # the last window ends after the input does: end of input fires it early
        keep = created <= last_event_ns
        ok_count = s.count_total == expected
        firings = np.unique(created[keep]).size
        note = (
            f"{s.rows:,} window results in {s.batches} sink batches; {int(keep.sum()):,} "
            f"results of {firings} windows closed by the watermark (the last window, closed "
            f"by end of input, excluded); counts {'match' if ok_count else 'DO NOT match'} "
            "the filtered input"
        )
        kept_up = bool(lat[keep].max() < 1e9) and ok_count and achieved >= 0.98 * args.rate
    else:
        keep = created >= start + int(args.warmup * 1e9)
        last = created >= start + int((args.seconds - 1) * 1e9)
        tail_p99 = _ms(lat[last], 99)
        done = (write.max() - start) / 1e9
        kept_up = (
            s.rows == expected
            and achieved >= 0.98 * args.rate
            and tail_p99 < 100
            and done < args.seconds + 0.5
        )
        note = (
            f"{s.rows:,} rows in {s.batches:,} sink batches (avg {s.rows / s.batches:.0f} "
            f"rows); offered {offered:,}, passed filter {expected:,}; last-second p99 "
            f"{tail_p99:.2f} ms; first {args.warmup:g} s excluded"
        )
    sel = lat[keep]
    return Outcome(
        pipeline,
        int(sel.size),
        s.batches,
        _ms(sel, 50),
        _ms(sel, 90),
        _ms(sel, 99),
        _ms(sel, 99.9),
        float(sel.max()) / 1e6,
        _ms(read_lat[keep], 99) if pipeline != "window" else float("nan"),
        achieved,
        t.cores,
        kept_up,
        note,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=100_000, help="events per second")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to offer input")
    p.add_argument("--parallelism", type=int, default=2)
    p.add_argument(
        "--linger", default=None, help="source batching linger, e.g. 5ms (default: the Flow's)"
    )
    p.add_argument("--warmup", type=float, default=1.0, help="seconds excluded from stats")
    p.add_argument(
        "--pipeline",
        default="hash,rebalance,window",
        help="comma-separated: hash, rebalance, window",
    )
    p.add_argument("--quick", action="store_true", help="2 s per pipeline")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.warmup = 2.0, 0.5
    pipelines = [x.strip() for x in args.pipeline.split(",") if x.strip()]
    for x in pipelines:
        if x not in ("hash", "rebalance", "window"):
            raise SystemExit(f"--pipeline: unknown pipeline {x!r} (hash, rebalance, window)")

    print_header("latency: end-to-end, source read to sink write")
    print(
        f"   rate {args.rate:,} events/s for {args.seconds:g} s, parallelism "
        f"{args.parallelism}, linger {args.linger or 'default'}, {KEYS:,} keys; load average before "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n",
        flush=True,
    )
    outcomes = [run_one(x, args) for x in pipelines]
    print_table(
        [
            "pipeline",
            "samples",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "read->sink p99",
            "events/s",
            "cpu/wall",
            "kept up",
        ],
        [
            [
                o.pipeline,
                o.rows,
                o.p50,
                o.p90,
                o.p99,
                o.p999,
                o.max,
                "-" if o.pipeline == "window" else o.read_p99,
                int(o.achieved_rate),
                o.cores,
                "yes" if o.kept_up else "NO",
            ]
            for o in outcomes
        ],
    )
    print()
    for o in outcomes:
        print(f"   {o.pipeline}: {o.note}")
    print(f"   load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    for o in outcomes:
        what = "emission latency" if o.pipeline == "window" else "p99"
        verdict = "PASS" if o.p99 < TARGET_P99_MS else "MISS"
        print(
            f"target p99 < {TARGET_P99_MS:g} ms ({o.pipeline}, {what}): {verdict} ({o.p99:.2f} ms)"
        )


if __name__ == "__main__":
    main()
