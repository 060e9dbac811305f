"""Windowed-aggregation throughput: Sluice against Bytewax, in one invocation.

The job: a 1 s tumbling-window sum of ``value`` per ``key`` over 1,000 keys,
event time in column ``ts`` (ms), 100 events per ms of event time. Input is an
in-memory columnar table generated once with NumPy (not timed).

Every measurement runs in a fresh subprocess so that it can set
``POLARS_MAX_THREADS`` before Polars is imported and pin itself to one CPU:

* Sluice, one thread, pinned to one CPU (the "one core" number);
* Sluice, Polars' default thread pool, not pinned;
* Bytewax 0.21 (``run_main``, one worker), pinned to one CPU, on fewer events.

Each run's output is checked against a plain Polars batch ``group_by`` of the
same data (OK/MISMATCH). The table reports wall time, events/s, events per
CPU-second, and the Sluice/Bytewax ratios from this same invocation.

    .venv/bin/python bench/window_throughput.py            # 10M Sluice, 1M Bytewax
    .venv/bin/python bench/window_throughput.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from common import measure, print_header, print_table

KEYS = 1_000
EVENTS_PER_MS = 100
BASE_TS_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z, a whole second
WINDOW_MS = 1_000
SEED = 42


# -- input and reference ---------------------------------------------------------------
def generate(n: int, disorder_ms: int, seed: int = SEED) -> Any:
    """The input table: key Int64 in [0, 1000), value Float64, ts Int64 ms.

    Event time advances by 1 ms every 100 rows; with ``disorder_ms`` each row is
    moved back by a random 0..disorder_ms ms (bounded out-of-orderness).
    """
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    ts = BASE_TS_MS + np.arange(n, dtype=np.int64) // EVENTS_PER_MS
    if disorder_ms:
        ts -= rng.integers(0, disorder_ms + 1, n, dtype=np.int64)
    return pl.DataFrame(
        {
            "key": rng.integers(0, KEYS, n, dtype=np.int64),
            "value": rng.random(n),
            "ts": ts,
        }
    )


def reference(df: Any) -> Any:
    """The same query as a plain Polars batch job: columns key, w (ts // 1000), total."""
    import polars as pl

    return df.group_by("key", (pl.col("ts") // WINDOW_MS).alias("w")).agg(
        pl.col("value").sum().alias("total")
    )


def compare(got: Any, want: Any) -> tuple[bool, str]:
    """Compare two (key, w, total) tables; sums may differ in the last bits."""
    import polars as pl

    if got.height != want.height:
        return False, f"{got.height} windows, expected {want.height}"
    j = want.join(got, on=["key", "w"], how="left", suffix="_got")
    missing = j.get_column("total_got").null_count()
    if missing:
        return False, f"{missing} (key, window) results missing"
    err = j.select(
        ((pl.col("total_got") - pl.col("total")).abs() / pl.col("total").abs().clip(1.0)).max()
    ).item()
    if err > 1e-9:
        return False, f"max relative error {err:.3g}"
    return True, f"{got.height} windows, max relative error {err:.1e}"


# -- the two engines -------------------------------------------------------------------
def run_sluice(df: Any, batch_rows: int, disorder_ms: int) -> tuple[Any, Any, dict[str, int]]:
    import polars as pl

    import sluice as sl

    with measure() as t:
        flow = sl.Flow("window_throughput", max_batch_rows=batch_rows)
        out = sl.sinks.collect()
        (
            flow.source(
                sl.sources.memory(df, batch_size=batch_rows),
                time="ts",
                watermark=sl.bounded_out_of_orderness(f"{disorder_ms}ms"),
            )
            .key_by("key")
            .window(sl.windows.tumbling("1s"))
            .agg(total=sl.agg.sum("value"))
            .sink(out)
        )
        result = flow.run()
    got = out.to_polars().select(
        "key", (pl.col("window_start").dt.epoch("ms") // WINDOW_MS).alias("w"), "total"
    )
    stats = {
        "window_batches_in": result.metric("window", "batches_in"),
        "window_records_in": result.metric("window", "records_in"),
        "late_dropped": result.metric("window", "late_dropped"),
    }
    return t, got, stats


def bytewax_items(df: Any) -> list[tuple[str, Any, float]]:
    """Per-event tuples (key, aware UTC datetime, value): Bytewax's natural input."""
    from datetime import UTC, datetime, timedelta

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    ms = timedelta(milliseconds=1)
    return [
        (str(k), epoch + t * ms, v)
        for k, t, v in zip(
            df.get_column("key").to_list(),
            df.get_column("ts").to_list(),
            df.get_column("value").to_list(),
            strict=True,
        )
    ]


def run_bytewax(df: Any, batch_size: int, disorder_ms: int) -> tuple[Any, Any, dict[str, int]]:
    from datetime import UTC, datetime, timedelta

    import bytewax.operators as op
    import polars as pl
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
    from bytewax.testing import TestingSink, TestingSource, run_main

    items = bytewax_items(df)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    frozen = datetime(2000, 1, 1, tzinfo=UTC)
    results: list[tuple[str, tuple[int, float]]] = []
    late: list[Any] = []
    with measure() as t:
        flow = Dataflow("window_throughput")
        events = op.input("input", flow, TestingSource(items, batch_size=batch_size))
        keyed = op.key_on("key", events, lambda e: e[0])
        # The watermark follows event time only (as Sluice's does): a frozen
        # now_getter stops Bytewax adding elapsed wall time to it, which would
        # drop in-order events as late whenever Bytewax runs slower than the
        # 100k events/s of event time; to_system_utc=None means "no wake-ups,
        # close windows on new items or EOF".
        clock = EventClock(
            ts_getter=lambda e: e[1],
            wait_for_system_duration=timedelta(milliseconds=disorder_ms),
            now_getter=lambda: frozen,
            to_system_utc=lambda _: None,
        )
        windower = TumblingWindower(length=timedelta(milliseconds=WINDOW_MS), align_to=epoch)
        sums = fold_window(
            "sum",
            keyed,
            clock,
            windower,
            builder=float,
            folder=lambda acc, e: acc + e[2],
            merger=lambda a, b: a + b,
            ordered=False,
        )
        op.output("out", sums.down, TestingSink(results))
        op.output("late", sums.late, TestingSink(late))
        run_main(flow)
    got = pl.DataFrame(
        {
            "key": [int(k) for k, _ in results],
            "w": [w for _, (w, _) in results],
            "total": [s for _, (_, s) in results],
        },
        schema={"key": pl.Int64, "w": pl.Int64, "total": pl.Float64},
    )
    return t, got, {"batch_size": batch_size, "late_dropped": len(late)}


# -- one measurement in this (fresh) process -------------------------------------------
def worker(args: argparse.Namespace) -> None:
    if args.pin:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import polars as pl

    n = args.events if args.worker == "sluice" else args.bytewax_events
    df = generate(n, args.disorder_ms)
    want = reference(df)
    runs = []
    ok, detail, stats = True, "", {}
    for _ in range(args.repeat):
        if args.worker == "sluice":
            t, got, stats = run_sluice(df, args.batch_rows, args.disorder_ms)
        else:
            t, got, stats = run_bytewax(df, args.bytewax_batch, args.disorder_ms)
        runs.append({"wall_s": t.wall_s, "cpu_s": t.cpu_s})
        ok, detail = compare(got, want)
        if not ok:
            break
    info = {
        "events": n,
        "runs": runs,
        "ok": ok,
        "detail": detail,
        "stats": stats,
        "polars_threads": pl.thread_pool_size(),
        "cpus": sorted(os.sched_getaffinity(0)),
    }
    print("RESULT " + json.dumps(info))


def spawn(args: argparse.Namespace, system: str, threads: int | None, pin: bool) -> dict:
    env = dict(os.environ)
    env.pop("POLARS_MAX_THREADS", None)
    if threads is not None:
        env["POLARS_MAX_THREADS"] = str(threads)
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        system,
        "--events",
        str(args.events),
        "--bytewax-events",
        str(args.bytewax_events),
        "--batch-rows",
        str(args.batch_rows),
        "--bytewax-batch",
        str(args.bytewax_batch),
        "--disorder-ms",
        str(args.disorder_ms),
        "--repeat",
        str(args.repeat),
        *(["--pin"] if pin else []),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{system} worker failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


def median_run(info: dict) -> dict:
    runs = sorted(info["runs"], key=lambda r: r["wall_s"])
    return runs[(len(runs) - 1) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000_000, help="events for Sluice")
    p.add_argument("--bytewax-events", type=int, default=1_000_000, help="events for Bytewax")
    p.add_argument("--batch-rows", type=int, default=262_144, help="Sluice batch size (rows)")
    p.add_argument(
        "--bytewax-batch",
        type=int,
        default=None,
        help="TestingSource batch size for Bytewax (default: same as --batch-rows)",
    )
    p.add_argument("--disorder-ms", type=int, default=0, help="max out-of-orderness of ts")
    p.add_argument("--repeat", type=int, default=3, help="runs per system (median reported)")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--skip-bytewax", action="store_true")
    p.add_argument("--worker", choices=["sluice", "bytewax"], help=argparse.SUPPRESS)
    p.add_argument("--pin", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bytewax_batch is None:
        args.bytewax_batch = args.batch_rows
    if args.quick:
        args.events, args.bytewax_events, args.repeat = 200_000, 20_000, 1
    if args.worker:
        worker(args)
        return

    print_header("window_throughput: 1 s tumbling-window sum, 1,000 keys")
    print(
        f"   Sluice {args.events:,} events (batches of {args.batch_rows:,} rows), "
        f"Bytewax {args.bytewax_events:,} events (TestingSource batch_size "
        f"{args.bytewax_batch:,}), {args.repeat} run(s) each, median shown\n",
        flush=True,
    )
    measured: list[tuple[str, dict]] = [
        ("sluice (1 thread, 1 CPU)", spawn(args, "sluice", 1, pin=True)),
        ("sluice (default threads)", spawn(args, "sluice", None, pin=False)),
    ]
    if not args.skip_bytewax:
        measured.append(("bytewax 0.21 (1 CPU)", spawn(args, "bytewax", None, pin=True)))

    rows = []
    rate: dict[str, float] = {}
    per_core: dict[str, float] = {}
    for name, info in measured:
        r = median_run(info)
        rate[name] = info["events"] / r["wall_s"]
        per_core[name] = info["events"] / r["cpu_s"]
        rows.append(
            [
                name,
                info["events"],
                r["wall_s"],
                r["cpu_s"],
                rate[name],
                per_core[name],
                "OK" if info["ok"] else "MISMATCH",
            ]
        )
    print_table(["system", "events", "wall s", "cpu s", "events/s", "events/cpu-s", "check"], rows)
    print()
    for name, info in measured:
        all_rates = ", ".join(f"{info['events'] / x['wall_s'] / 1e6:.2f}M" for x in info["runs"])
        print(
            f"   {name}: runs {all_rates} ev/s; polars threads {info['polars_threads']}, "
            f"cpus {info['cpus']}; {info['detail']}; {info['stats']}"
        )
    print()

    one = "sluice (1 thread, 1 CPU)"
    print(
        f"target >= 10M events/s on one core: {'PASS' if rate[one] >= 10e6 else 'MISS'} "
        f"({rate[one] / 1e6:.1f}M events/s, {per_core[one] / 1e6:.1f}M events/cpu-s)"
    )
    bw = "bytewax 0.21 (1 CPU)"
    if bw in rate:
        for name in (one, "sluice (default threads)"):
            print(
                f"ratio {name} / bytewax: {rate[name] / rate[bw]:.1f}x events/s, "
                f"{per_core[name] / per_core[bw]:.1f}x events/cpu-s"
            )
        ratio = rate[one] / rate[bw]
        print(f"target >= 50x Bytewax (one core vs one core): {'PASS' if ratio >= 50 else 'MISS'}")
    if not all(info["ok"] for _, info in measured):
        raise SystemExit("MISMATCH: a system's output differs from the Polars batch result")


if __name__ == "__main__":
    main()
