"""Checkpoint cost: throughput with and without checkpoints, and the size,
duration and recovery time of a checkpoint holding 1M keys of window state.

Part 1 runs the window benchmark's job (1 s tumbling sum over 1,000 keys, an
in-memory columnar source) on ``--events`` events three ways in the same
invocation: no checkpoints, a checkpoint every 1 s, and every 100 ms, and
prints the throughput ratio (target: overhead under 10% at 1 s).

Part 2 builds 1,000,000 keys of open window state (one 1 h window per key),
takes a checkpoint on stop, and reports its duration and size, and how long
the job is blocked by it (snapshots are written asynchronously); then it
restores the job from it and reports the recovery time (load + verify +
re-slice + restore), also at another parallelism (rescaling).

    .venv/bin/python bench/checkpoint.py               # 60M events, 1M keys
    .venv/bin/python bench/checkpoint.py --quick
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import machine_info, measure, print_header, print_table


def _events(n: int):
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(0)
    return pl.DataFrame(
        {"key": rng.integers(0, 1000, n), "value": rng.random(n), "ts": np.arange(n) // 100}
    )


def _throughput(
    df, interval: str | None, ckdir: Path | None, batch: int
) -> tuple[float, int, float, list[float]]:
    import sluice as sl

    flow = sl.Flow("ckbench", max_batch_rows=batch)
    out = sl.sinks.collect()
    (
        flow.source(sl.sources.memory(df, batch_size=batch), time="ts")
        .key_by("key")
        .window(sl.windows.tumbling("1s"))
        .agg(total=sl.agg.sum("value"))
        .sink(out)
    )
    kwargs = {} if interval is None else {"checkpoint_dir": ckdir, "checkpoint_interval": interval}
    blocked: list[float] = []
    from sluice.runtime import local

    trigger = local._Coordinator.trigger

    def timed(self, **kw):  # the time the job is blocked by a checkpoint
        t0 = time.perf_counter()
        try:
            return trigger(self, **kw)
        finally:
            blocked.append(time.perf_counter() - t0)

    local._Coordinator.trigger = timed
    try:
        with measure() as t:
            res = flow.run(**kwargs)
    finally:
        local._Coordinator.trigger = trigger
    return df.height / t.wall_s, len(res.checkpoints), t.wall_s, blocked


def part1(events: int, repeat: int, batch: int) -> list[list[object]]:
    df = _events(events)
    _throughput(df.head(min(events, 5_000_000)), None, None, batch)  # warm-up
    rows = []
    base = None
    for label, interval in (
        ("no checkpoints", None),
        ("every 1 s", "1s"),
        ("every 100 ms", "100ms"),
    ):
        rates, counts, blocked = [], [], []
        for _ in range(repeat):
            d = Path(tempfile.mkdtemp(prefix="sluice-ckbench-"))
            try:
                rate, n, _, b = _throughput(df, interval, d, batch)
            finally:
                shutil.rmtree(d, ignore_errors=True)
            rates.append(rate)
            counts.append(n)
            blocked.extend(b)
        med = statistics.median(rates)
        base = base or med
        blk = f"{statistics.median(blocked) * 1000:.1f} ms" if blocked else ""
        rows.append(
            [label, f"{med / 1e6:.2f}M", max(counts), f"{(1 - med / base) * 100:+.1f}%", blk]
        )
    return rows


def part2(keys: int, parallelism: int, rescale_to: int) -> list[list[object]]:
    import numpy as np
    import polars as pl

    import sluice as sl

    df = pl.DataFrame(
        {"key": np.arange(keys), "value": np.ones(keys), "ts": np.zeros(keys, dtype=np.int64)}
    )

    def build(flow: sl.Flow, data) -> None:
        src = sl.sources.IteratorSource(iter([data]), bounded=False)
        (
            flow.source(src, time="ts")
            .key_by("key")
            .window(sl.windows.tumbling("1h"))
            .agg(n=sl.agg.count(), total=sl.agg.sum("value"))
            .sink(sl.sinks.collect())
        )

    d = Path(tempfile.mkdtemp(prefix="sluice-ck1m-"))
    rows = []
    try:
        flow = sl.Flow("state1m", parallelism=parallelism)
        build(flow, df)
        # let it ingest everything, then stop: the stop takes the checkpoint
        import threading

        stopper = threading.Timer(3.0, flow.stop)
        stopper.start()
        res = flow.run(checkpoint_dir=d)
        stopper.join()
        from sluice.runtime.checkpoint import CheckpointStorage

        info = CheckpointStorage(d).list()[-1]
        # time the checkpoint itself: take one more from a restored job
        flow2 = sl.Flow("state1m", parallelism=parallelism)
        build(flow2, df.clear())
        from sluice.runtime.local import CheckpointSettings, LocalRuntime

        storage = CheckpointStorage(d)
        plan = flow2.physical_plan()
        t0 = time.perf_counter()
        restore = storage.latest()
        rt = LocalRuntime(plan, checkpointing=CheckpointSettings(storage), restore=restore)
        recovery = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert rt.coordinator is not None
        rt.coordinator.trigger()  # barriers and captures: the job's share
        blocked = time.perf_counter() - t0
        rt.coordinator.poll(wait=True)  # files and manifest on the writer thread
        duration = time.perf_counter() - t0
        rt._shutdown()
        state_rows = res.metrics["window"].records_in
        rows.append(
            [
                f"checkpoint of {state_rows:,} keys",
                f"{duration * 1000:.0f} ms",
                f"{info.size_bytes / 1e6:.1f} MB",
            ]
        )
        rows.append(["  of which the job is blocked", f"{blocked * 1000:.0f} ms", ""])
        rows.append([f"recovery at parallelism {parallelism}", f"{recovery * 1000:.0f} ms", ""])
        flow3 = sl.Flow("state1m", parallelism=rescale_to)
        build(flow3, df.clear())
        t0 = time.perf_counter()
        rt3 = LocalRuntime(flow3.physical_plan(), restore=CheckpointStorage(d).latest())
        rows.append(
            [
                f"recovery rescaled {parallelism} -> {rescale_to}",
                f"{(time.perf_counter() - t0) * 1000:.0f} ms",
                "",
            ]
        )
        rt3._shutdown()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=60_000_000)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=262_144)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.events, a.keys, a.repeat = 2_000_000, 50_000, 1
    print_header("Sluice checkpoint cost")
    for k, v in machine_info().items():
        print(f"   {k:<18}  {v}")
    print()
    print(
        f"   part 1: {a.events:,} events, 1 s tumbling sum over 1,000 keys, batches of {a.batch_rows:,}; median of {a.repeat}"
    )
    print_table(
        ["checkpointing", "events/s", "checkpoints", "overhead", "blocked/ckpt"],
        part1(a.events, a.repeat, a.batch_rows),
    )
    print()
    print(f"   part 2: {a.keys:,} keys of open window state (count + sum), parallelism 2")
    print_table(["what", "time", "size"], part2(a.keys, 2, 4))


if __name__ == "__main__":
    main()
