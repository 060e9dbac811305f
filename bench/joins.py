"""Join throughput: a regular join and an interval join of N + N rows at parallelism 1.

* regular: inner equi-join on ``k`` with about one right row per key (``k``
  uniform over N keys), so the output is about N rows and both sides stay in
  state (unbounded) to the end;
* interval: inner join on ``k`` (10,000 keys) with
  ``right.t BETWEEN left.t - 1s AND left.t + 1s``; event time advances 1 ms
  every 10 rows on each side, so state stays bounded by the watermark.

Inputs are generated with NumPy (not timed) and fed from in-memory sources in
batches of ``--batch`` rows. Each run's row count is checked against DuckDB
over the same data (OK/MISMATCH). events/s counts input rows of both sides.

    .venv/bin/python bench/joins.py              # 1M + 1M
    .venv/bin/python bench/joins.py --n 100000   # quick
"""

from __future__ import annotations

import argparse
from typing import Any

from common import measure, print_header, print_table

SEED = 7


def generate(n: int, keys: int, seed: int) -> Any:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "k": rng.integers(0, keys, n),
            "v": rng.random(n),
            "t": np.arange(n, dtype=np.int64) // 10,
        }
    )


def run(kind: str, left: Any, right: Any, batch: int) -> tuple[int, float, float]:
    import sluice as sl

    flow = sl.Flow("bench-joins")
    out = sl.sinks.collect()
    a = flow.source(sl.sources.memory(left, batch_size=batch), time="t")
    b = flow.source(sl.sources.memory(right, batch_size=batch), time="t")
    if kind == "regular":
        j = a.join(b, on="k")
    else:
        j = a.interval_join(b, on="k", lower="-1s", upper="1s")
    j.sink(out)
    with measure() as t:
        flow.run()
    rows = sum(x.height for x in out.batches)
    return rows, t.wall_s, t.cpu_s


def expected(kind: str, left: Any, right: Any) -> int:
    import duckdb

    con = duckdb.connect()
    con.register("l", left.to_arrow())
    con.register("r", right.to_arrow())
    cond = "" if kind == "regular" else " AND r.t BETWEEN l.t - 1000 AND l.t + 1000"
    return int(con.sql(f"SELECT count(*) FROM l JOIN r ON l.k = r.k{cond}").fetchall()[0][0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000, help="rows per side")
    ap.add_argument("--batch", type=int, default=65_536, help="source batch size")
    args = ap.parse_args()
    print_header(f"joins, {args.n:,} + {args.n:,} rows, parallelism 1")
    rows = []
    for kind, keys in (("regular", args.n), ("interval", 10_000)):
        left = generate(args.n, keys, SEED)
        right = generate(args.n, keys, SEED + 1)
        got, wall, cpu = run(kind, left, right, args.batch)
        want = expected(kind, left, right)
        ev = 2 * args.n
        rows.append(
            [
                kind,
                f"{ev:,}",
                f"{got:,}",
                f"{wall:.2f}",
                f"{ev / wall:,.0f}",
                f"{cpu / wall:.2f}",
                "OK" if got == want else f"MISMATCH (want {want:,})",
            ]
        )
    print_table(["join", "events in", "rows out", "wall s", "events/s", "cores", "check"], rows)


if __name__ == "__main__":
    main()
