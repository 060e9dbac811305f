"""Nexmark generator throughput on one core: ``generate_events``, ``generate_kind``,
``write_parquet`` and the ``nexmark`` source in flows (combined and per kind).

The process sets ``POLARS_MAX_THREADS=1`` before Polars is imported and pins
itself to one CPU (``sched_setaffinity``), so the numbers are per core. Each
row is the best of ``--repeat`` runs (the machine may be shared); wall and CPU
seconds are both shown.

Rows:

* ``generate_events`` in one call for ``--events`` events (the generator cuts
  internal chunks of 2**17 events);
* ``generate_events`` in calls of ``--batch`` events, as the ``nexmark`` source
  does (one call per source batch);
* ``write_parquet`` (zstd) of the same events: generation plus Parquet encoding;
* ``generate_kind(cfg, "bid")`` in calls of ``--batch`` events: the bids alone;
* a flow ``sl.sources.nexmark(events) -> sl.sinks.discard()`` at parallelism 1
  (event time on ``date_time``, 4 s watermark), and the same with
  ``bids(events)`` (filter + struct unnest) before the sink, then q0's and q2's
  shapes (``select(auction, bidder, price, date_time, extra)``;
  ``filter(auction % 123 == 0).select(auction, price)``) on ``bids(events)``;
* the same three flows on the per-kind source ``nexmark(events, kind="bid")``,
  q2 with ``columns=["auction", "price", "date_time"]`` (only those generated).

events/s always counts every event id covered (person + auction + bid, as
Nexmark counts), also where only the bids are generated. MB/s counts the events'
logical bytes, as Nexmark sizes rows (8 bytes per number or time plus the bytes
of the strings; about 190 bytes per event), the same for every row and only for
the rows that generate every kind; the Parquet files' size on disk is printed
below the table.

    .venv/bin/python bench/nexmark_generate.py              # 5M events
    .venv/bin/python bench/nexmark_generate.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ["POLARS_MAX_THREADS"] = "1"  # before Polars is imported
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, measure, print_header, print_table


def best(runs: list[Timing]) -> Timing:
    return min(runs, key=lambda t: t.cpu_s)


def logical_bytes(tables: object) -> int:
    """8 bytes per numeric or time column and the string bytes, over the three tables."""
    import polars as pl

    total = 0
    for df in tables:  # type: ignore[attr-defined]
        for name, dtype in df.schema.items():
            if dtype == pl.String:
                total += int(df[name].str.len_bytes().sum())
            else:
                total += 8 * df.height
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--batch", type=int, default=100_000, help="events per call (source-like)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the first)")
    ap.add_argument("--quick", action="store_true", help="smoke run (200k events, 1 repeat)")
    args = ap.parse_args()
    if args.quick:
        args.events, args.repeat = 200_000, 1
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0)) if args.cpu is None else args.cpu
        os.sched_setaffinity(0, {cpu})

    from sluice.nexmark.generator import (
        NexmarkConfig,
        generate,
        generate_events,
        generate_kind,
        write_parquet,
    )

    n = args.events
    cfg = NexmarkConfig(events=n, seed=args.seed)
    generate_events(cfg, 0, min(n, 10_000))  # warm-up: per-seed string pools, imports
    print_header(f"Nexmark generator, {n:,} events, seed {args.seed}, one core")

    size = logical_bytes(generate(cfg))  # not timed
    rows = []
    one = []
    for _ in range(args.repeat):
        with measure() as t:
            ev = generate_events(cfg, 0, n)
        del ev
        one.append(t)
    rows.append(("generate_events (one call)", best(one)))

    batched = []
    for _ in range(args.repeat):
        with measure() as t:
            for a in range(0, n, args.batch):
                generate_events(cfg, a, min(a + args.batch, n))
        batched.append(t)
    rows.append((f"generate_events ({args.batch:,} per call)", best(batched)))

    kind = []
    for _ in range(args.repeat):
        with measure() as t:
            for a in range(0, n, args.batch):
                generate_kind(cfg, "bid", a, min(a + args.batch, n))
        kind.append(t)
    rows.append((f"generate_kind bid ({args.batch:,} per call)", best(kind)))
    per_kind = {rows[-1][0]}  # rows that generate the bids only: no MB/s

    pq, on_disk = [], 0
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.repeat):
            with measure() as t:
                paths = write_parquet(cfg, d)
            on_disk = sum(p.stat().st_size for p in paths.values())
            pq.append(t)
    rows.append(("write_parquet (zstd)", best(pq)))

    import polars as pl

    import sluice as sl
    from sluice.nexmark.source import bids

    shapes = {
        "discard": lambda b: b,
        "q0": lambda b: b.select("auction", "bidder", "price", "date_time", "extra"),
        "q2": lambda b: b.filter(pl.col("auction") % 123 == 0).select("auction", "price"),
    }
    flows: list[tuple[str, str | None, str | None]] = [("flow: source -> discard", None, None)]
    flows += [(f"flow: bids(source) -> {q}", "combined", q) for q in shapes]
    flows += [(f"flow: nexmark(kind='bid') -> {q}", "bid", q) for q in shapes]
    for label, how, shape in flows:
        runs = []
        for _ in range(args.repeat):
            flow = sl.Flow("nexmark-gen")
            if how == "bid":
                cols = ["auction", "price", "date_time"] if shape == "q2" else None
                src = sl.sources.nexmark(events=n, seed=args.seed, kind="bid", columns=cols)
                stream = flow.source(src, time="date_time", watermark="4s")
            else:
                src = sl.sources.nexmark(events=n, seed=args.seed)
                combined = flow.source(src, time="date_time", watermark="4s")
                stream = combined if how is None else bids(combined)
            (stream if shape is None else shapes[shape](stream)).sink(sl.sinks.discard())
            with measure() as t:
                flow.run(parallelism=1)
            runs.append(t)
        rows.append((label, best(runs)))
        if how == "bid":
            per_kind.add(label)

    print_table(
        ["what", "wall s", "cpu s", "events/s (wall)", "events/cpu-s", "MB/s (wall)"],
        [
            (
                name,
                t.wall_s,
                t.cpu_s,
                n / t.wall_s,
                n / t.cpu_s,
                "-" if name in per_kind else size / t.wall_s / 1e6,
            )
            for name, t in rows
        ],
    )
    print(f"\nlogical bytes: {size:,} ({size / max(n, 1):.1f} per event)")
    print(f"parquet files: {on_disk:,} bytes")
    print(f"cpus: {sorted(os.sched_getaffinity(0))}  load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
