"""Nexmark on Sluice, PyFlink SQL and Bytewax: the same queries on the same generated input.

For each query (default q0 q1 q2 q3 q5 q7 q8 q11; ``--queries all`` adds q4 q9 q15-q22 on
Flink and Sluice) the input is generated once with ``sluice.nexmark.generator`` (not
timed) and run by:

* **Flink**: PyFlink 2.3 SQL, local mini-cluster, parallelism 1, in its own venv
  (``bench/.venv-flink``; PyFlink pins pyarrow < 17 and numpy < 2.2). The queries are
  nexmark-flink's ``queries/qN.sql`` (``bench/nexmark_peers/flink/``) with the blackhole
  sink. The pip wheel has no Parquet format, so Flink reads the same tables written as
  CSV (one ``filesystem`` table per stream, nexmark-flink's 4 s watermark). Per query,
  the same job on empty tables is timed too and subtracted (JVM start is outside the
  timed region; job submission and mini-cluster start/stop are the subtracted part).
* **Bytewax 0.21**: dataflows written here for the queries its operators express
  (``run_main``, one worker). Input rows become Python tuples inside the timed region.
* **Sluice**: ``run_sluice`` below (``sluice.nexmark.queries.run_query`` on the Parquet
  files).

events/s = all generated events (person + auction + bid, as nexmark counts) / seconds.
``decode-only/bytewax`` is Bytewax's time over the time Polars takes only to decode
the columns the query reads (Sluice's worker measures it after its run): the highest
sluice/bytewax ratio any engine reading these files could reach. On q0/q1 decoding
the zstd ``extra`` strings is most of it; ``--compression lz4`` shows the same runs
on files that decode about 3x faster.
Each system's result row count is printed; they must agree (``check``) for the
deterministic queries, or the benchmark measured different computations. For the
updating results (q4, q9, q18, q19) the count is the final table's rows (Sluice:
its upsert stream materialized, in an untimed extra run).

    .venv/bin/python bench/nexmark_peers.py              # 10M events (q0-q3, q8), 2M (others)
    .venv/bin/python bench/nexmark_peers.py --quick      # smoke run, 100k events
    .venv/bin/python bench/nexmark_peers.py --queries q5,q7 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import measure, print_header, print_table

HERE = Path(__file__).resolve().parent
PEERS = HERE / "nexmark_peers"
FLINK_VENV = HERE / ".venv-flink"
FLINK_PYTHON = FLINK_VENV / "bin" / "python"
FLINK_REQUIREMENTS = PEERS / "requirements-flink.txt"

DEFAULT_QUERIES = ["q0", "q1", "q2", "q3", "q5", "q7", "q8", "q11"]
EXTRA_QUERIES = ["q4", "q9", "q15", "q16", "q17", "q18", "q19", "q20", "q21", "q22"]
STATELESS = {"q0", "q1", "q2", "q21", "q22"}
#: stateful queries cheap enough in every system to run on --events too (on 2M
#: events Flink's fixed cost is most of their run, and Sluice's run lasts 0.05 s)
LARGE = STATELESS | {"q3", "q8"}
STREAMS = ("person", "auction", "bid")


# -- input -----------------------------------------------------------------------------
def prepare_data(events: int, seed: int, root: Path, compression: str = "zstd") -> Path:
    """Generate ``events`` events once into ``root/nexmark-<events>-<seed>[-<codec>]``:
    the three Parquet files (``compression``), the same tables as header-less CSV for
    Flink (``csv/<stream>/``) and an empty copy of the CSV layout (``csv-empty/``).
    Reused when present."""
    import polars as pl

    try:
        from sluice.nexmark.generator import NexmarkConfig, write_parquet
    except ImportError as e:
        raise SystemExit(f"sluice.nexmark.generator is not importable ({e})") from e

    d = root / (f"nexmark-{events}-{seed}" + ("" if compression == "zstd" else f"-{compression}"))
    done = d / ".complete"
    if done.exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    print(f"   generating {events:,} events (seed {seed}) into {d} ...", flush=True)
    write_parquet(NexmarkConfig(events=events, seed=seed), d, compression=compression)
    for kind in STREAMS:
        for sub in ("csv", "csv-empty"):
            (d / sub / kind).mkdir(parents=True, exist_ok=True)
        (d / "csv-empty" / kind / "part-0.csv").write_text("")
        # Flink's CSV TIMESTAMP(3) format: yyyy-MM-dd HH:mm:ss.SSS (UTC wall time).
        pl.scan_parquet(d / f"{kind}.parquet").sink_csv(
            d / "csv" / kind / "part-0.csv",
            include_header=False,
            datetime_format="%Y-%m-%d %H:%M:%S%.3f",
        )
    done.write_text("")
    return d


def total_events(data_dir: Path) -> int:
    import polars as pl

    return sum(
        pl.scan_parquet(data_dir / f"{k}.parquet").select(pl.len()).collect().item()
        for k in STREAMS
    )


def bytewax_rows(data_dir: Path, kinds: tuple[str, ...], chunk: int = 8192) -> Iterator[Any]:
    """The rows of ``kinds`` as Python tuples in event-time order, converted lazily.

    One stream: its row tuples, ``date_time`` an aware UTC datetime. Several: the
    streams merged by ``date_time`` (stable, as the generator interleaves them) into
    ``(kind, date_time, row)`` items, i.e. nexmark's one combined source.
    """
    import polars as pl

    frames = [
        pl.read_parquet(data_dir / f"{k}.parquet").with_columns(
            pl.col(pl.Datetime).dt.replace_time_zone("UTC")
        )
        for k in kinds
    ]
    if len(kinds) == 1:
        df = frames[0]
        for a in range(0, df.height, chunk):
            yield from df.slice(a, chunk).iter_rows()
        return
    # The merge order (by time, then stream) is computed before iteration starts;
    # only the conversion to Python objects happens while Bytewax runs.
    order = pl.concat(
        [
            f.select(
                pl.col("date_time").alias("t"),
                pl.lit(i, pl.Int8).alias("k"),
            )
            for i, f in enumerate(frames)
        ]
    ).sort("t", "k", maintain_order=True)
    cursors = [f.iter_rows() for f in frames]
    at = [f.columns.index("date_time") for f in frames]
    for k in order.get_column("k").to_list():
        row = next(cursors[k])
        yield (kinds[k], row[at[k]], row)


# -- Bytewax dataflows -----------------------------------------------------------------
def _bytewax_parts() -> Any:
    """Imports and small pieces shared by the dataflows (a namespace)."""
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    import bytewax.operators as op
    import bytewax.operators.windowing as win
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    class CountPartition(StatelessSinkPartition[Any]):
        def __init__(self, total: list[int]) -> None:
            self.total = total

        def write_batch(self, items: list[Any]) -> None:
            self.total[0] += len(items)

    class CountSink(DynamicSink[Any]):
        """Counts rows (a blackhole that remembers how many)."""

        def __init__(self) -> None:
            self.total = [0]

        def build(self, step_id: str, worker_index: int, worker_count: int) -> CountPartition:
            return CountPartition(self.total)

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    frozen = datetime(2000, 1, 1, tzinfo=UTC)

    def clock(ts: Callable[[Any], datetime], wait_s: float = 4.0) -> Any:
        # nexmark's watermark (max event time - 4 s); a frozen now_getter keeps wall
        # time out of it (see window_throughput.py: else in-order events become late).
        return win.EventClock(
            ts_getter=ts,
            wait_for_system_duration=timedelta(seconds=wait_s),
            now_getter=lambda: frozen,
            to_system_utc=lambda _: None,
        )

    return SimpleNamespace(
        op=op,
        win=win,
        Dataflow=Dataflow,
        TestingSource=TestingSource,
        run_main=run_main,
        CountSink=CountSink,
        clock=clock,
        epoch=epoch,
        timedelta=timedelta,
    )


# Column positions in the row tuples.
B_AUCTION, B_BIDDER, B_PRICE, B_CHANNEL, B_URL, B_TIME, B_EXTRA = range(7)
P_ID, P_NAME, P_CITY, P_STATE = 0, 1, 4, 5
A_ID, A_SELLER, A_CATEGORY = 0, 7, 8


def bytewax_flow(query: str, bw: Any, src: Any, late: Any) -> tuple[Any, Any]:
    """Dataflow of ``query`` reading ``src``; results to a counting sink, late items
    (which must be none) to ``late``. Returns (flow, result sink)."""
    op, win, td = bw.op, bw.win, bw.timedelta
    flow = bw.Dataflow(f"nexmark_{query}")
    rows = op.input("input", flow, src)
    out = bw.CountSink()

    if query == "q0":
        res = op.map("q0", rows, lambda b: (b[0], b[1], b[2], b[5], b[6]))
    elif query == "q1":
        res = op.map("q1", rows, lambda b: (b[0], b[1], b[2] * 0.908, b[5], b[6]))
    elif query == "q2":
        res = op.filter_map(
            "q2", rows, lambda b: (b[B_AUCTION], b[B_PRICE]) if b[B_AUCTION] % 123 == 0 else None
        )
    elif query == "q3":
        wanted = op.filter(
            "filter",
            rows,
            lambda e: (
                e[2][A_CATEGORY] == 10 if e[0] == "auction" else e[2][P_STATE] in ("OR", "ID", "CA")
            ),
        )
        keyed = op.key_on(
            "key", wanted, lambda e: str(e[2][A_SELLER] if e[0] == "auction" else e[2][P_ID])
        )

        def join(state: Any, e: Any) -> tuple[Any, list[Any]]:
            person, pending = state if state is not None else (None, [])
            if e[0] == "person":
                out = [(e[2][P_NAME], e[2][P_CITY], e[2][P_STATE], a[A_ID]) for a in pending]
                return (e[2], []), out
            if person is None:
                return (None, [*pending, e[2]]), []
            return (person, pending), [(person[P_NAME], person[P_CITY], person[P_STATE], e[2][0])]

        res = op.stateful_flat_map("join", keyed, join)
    elif query == "q5":
        hop = win.SlidingWindower(length=td(seconds=10), offset=td(seconds=2), align_to=bw.epoch)
        counts = win.count_window(
            "count", rows, bw.clock(lambda b: b[B_TIME]), hop, lambda b: str(b[B_AUCTION])
        )
        op.output("late_count", counts.late, late)
        # Bytewax's event clock is per key: an auction's hop window closes when that
        # auction sees a later bid, or at end of input. So the max over all auctions of
        # a window is only known to be complete at EOF; gather per window id until then.
        per_window = op.key_on(
            "by_window",
            op.map("w", counts.down, lambda kv: (kv[1][0], int(kv[0]), kv[1][1])),
            lambda x: str(x[0]),
        )

        class Winners(op.StatefulLogic):  # type: ignore[name-defined]
            """Auctions with the window's maximum bid count, emitted at EOF."""

            def __init__(self) -> None:
                self.best: tuple[int, list[int]] = (0, [])

            def on_item(self, value: Any) -> tuple[list[Any], bool]:
                _, auction, n = value
                if n > self.best[0]:
                    self.best = (n, [auction])
                elif n == self.best[0]:
                    self.best[1].append(auction)
                return [], False

            def on_eof(self) -> tuple[list[Any], bool]:
                n, auctions = self.best
                return [(a, n) for a in auctions], True

            def snapshot(self) -> Any:
                return self.best

        res = op.stateful("winners", per_window, lambda _: Winners())
    elif query == "q7":
        # max price per 10 s tumbling window; bids with that price whose time is in
        # [window_end - 10 s, window_end] (BETWEEN includes the end instant, which
        # belongs to the next window)
        def fold(s: Any, b: Any) -> Any:
            mx, at_max, at_start = s
            if b[B_TIME].timestamp() % 10 == 0:
                at_start = [*at_start, b]
            if b[B_PRICE] > mx:
                return b[B_PRICE], [b], at_start
            if b[B_PRICE] == mx:
                at_max.append(b)
            return mx, at_max, at_start

        keyed = op.key_on("all", rows, lambda _: "all")
        maxes = win.fold_window(
            "max",
            keyed,
            bw.clock(lambda b: b[B_TIME]),
            win.TumblingWindower(length=td(seconds=10), align_to=bw.epoch),
            builder=lambda: (-1, [], []),
            folder=fold,
            merger=lambda a, b: a,
            ordered=False,
        )
        op.output("late_max", maxes.late, late)

        class Emit(op.StatefulLogic):  # type: ignore[name-defined]
            """Windows arrive in order (one key); emit window w when w+1 or EOF comes."""

            def __init__(self) -> None:
                self.prev: Any = None

            def _flush(self, nxt: Any) -> list[Any]:
                if self.prev is None:
                    return []
                wid, (mx, at_max, _) = self.prev
                got = [(b[0], b[2], b[1], b[5], b[6]) for b in at_max]
                if nxt is not None and nxt[0] == wid + 1:
                    got += [(b[0], b[2], b[1], b[5], b[6]) for b in nxt[1][2] if b[2] == mx]
                return got

            def on_item(self, value: Any) -> tuple[list[Any], bool]:
                got = self._flush(value)
                self.prev = value
                return got, False

            def on_eof(self) -> tuple[list[Any], bool]:
                got = self._flush(None)
                self.prev = None
                return got, False

            def snapshot(self) -> Any:
                return self.prev

        res = op.stateful("emit", maxes.down, lambda _: Emit())
    elif query == "q8":
        people = op.key_on(
            "p", op.filter("persons", rows, lambda e: e[0] == "person"), lambda e: str(e[2][P_ID])
        )
        sellers = op.key_on(
            "a",
            op.filter("auctions", rows, lambda e: e[0] == "auction"),
            lambda e: str(e[2][A_SELLER]),
        )
        joined = win.join_window(
            "join",
            bw.clock(lambda e: e[1]),
            win.TumblingWindower(length=td(seconds=10), align_to=bw.epoch),
            people,
            sellers,
            insert_mode="last",
            emit_mode="final",
        )
        op.output("late_join", joined.late, late)
        res = op.filter_map(
            "both",
            joined.down,
            lambda kv: (
                (int(kv[0]), kv[1][1][0][2][P_NAME], kv[1][0])
                if kv[1][1][0] is not None and kv[1][1][1] is not None
                else None
            ),
        )
    elif query == "q11":
        sessions = win.count_window(
            "count",
            rows,
            bw.clock(lambda b: b[B_TIME]),
            win.SessionWindower(gap=td(seconds=10)),
            lambda b: str(b[B_BIDDER]),
        )
        op.output("late_session", sessions.late, late)
        res = sessions.down
    else:
        raise ValueError(f"no Bytewax dataflow for {query}")
    op.output("out", res, out)
    return flow, out


#: Streams each Bytewax dataflow reads (merged by time when more than one).
BYTEWAX_INPUT: dict[str, tuple[str, ...]] = {
    "q0": ("bid",),
    "q1": ("bid",),
    "q2": ("bid",),
    "q3": ("person", "auction"),
    "q5": ("bid",),
    "q7": ("bid",),
    "q8": ("person", "auction"),
    "q11": ("bid",),
}
#: Why the other queries have no Bytewax dataflow here.
BYTEWAX_MISSING = (
    "q4/q9/q15-q20 need updating (retracting) aggregates or joins over unbounded state, "
    "which Bytewax has no operators for; q21/q22 are expressible but not written"
)


def run_bytewax(query: str, data_dir: Path, batch: int) -> tuple[Any, int, int]:
    bw = _bytewax_parts()
    late = bw.CountSink()
    with measure() as t:
        src = bw.TestingSource(bytewax_rows(data_dir, BYTEWAX_INPUT[query]), batch_size=batch)
        flow, out = bytewax_flow(query, bw, src, late)
        bw.run_main(flow)
    return t, out.total[0], late.total[0]


# -- Sluice ------------------------------------------------------------------------------
def run_sluice(query: str, data_dir: Path, parallelism: int) -> int:
    """Run ``query`` on Sluice over the Parquet files in ``data_dir``; result rows."""
    from sluice.nexmark.queries import run_query

    return int(run_query(query, data_dir, parallelism=parallelism).rows)


def sluice_available() -> str | None:
    """None if the Sluice queries can be imported, else why not."""
    try:
        import sluice.nexmark.queries  # noqa: F401
    except ImportError as e:
        return f"sluice.nexmark.queries not importable ({e})"
    return None


# -- subprocess workers ------------------------------------------------------------------
def decode_floor(query: str, data_dir: Path) -> float | None:
    """Seconds to only decode the columns ``query`` reads from the Parquet files
    (Polars, in this process, best of 3): the part of the run neither Sluice nor
    Bytewax (which reads the files the same way) can avoid. None where the query
    does not declare its columns."""
    import polars as pl

    from sluice.nexmark.queries import get

    cols = get(query).columns
    if not cols:
        return None
    best = float("inf")
    for _ in range(3):
        with measure() as t:
            for kind, names in cols.items():
                pl.read_parquet(data_dir / f"{kind}.parquet", columns=names)
        best = min(best, t.wall_s)
    return best


def final_rows(query: str, data_dir: Path) -> int | None:
    """For a query with an updating result (an upsert stream), the rows of its final
    table (what Flink's batch ``COUNT(*)`` counts), from an untimed run into a
    collecting sink; None for an append-only result."""
    import sluice as sl
    from sluice.nexmark.queries import NexmarkInput, get

    q = get(query)
    flow = sl.Flow(f"rows-{q.name}")
    stream = q.build(NexmarkInput.files(flow, data_dir, q.columns))
    if stream.upsert_key is None:
        return None
    out = sl.sinks.collect()
    stream.sink(out)
    flow.run()
    return sl.materialize(out, list(stream.upsert_key)).height


def worker(args: argparse.Namespace) -> None:
    data = Path(args.data)
    runs, rows, late, floor = [], None, 0, None
    if args.worker == "sluice":
        import sluice.nexmark.queries  # noqa: F401 - imports are not timed (as for Bytewax)
    for _ in range(args.repeat):
        if args.worker == "sluice":
            with measure() as t:
                rows = run_sluice(args.query, data, args.parallelism)
        else:
            t, rows, late = run_bytewax(args.query, data, args.bytewax_batch)
        runs.append({"wall_s": t.wall_s, "cpu_s": t.cpu_s})
    if args.worker == "sluice":
        floor = decode_floor(args.query, data)
        final = final_rows(args.query, data)
        if final is not None:  # an upsert stream: compare its final table
            rows = final
    print("RESULT " + json.dumps({"runs": runs, "rows": rows, "late": late, "floor_s": floor}))


def spawn(args: argparse.Namespace, system: str, query: str, data: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        system,
        "--query",
        query,
        "--data",
        str(data),
        "--repeat",
        str(args.repeat),
        "--parallelism",
        str(args.parallelism),
        "--bytewax-batch",
        str(args.bytewax_batch),
    ]
    return _result_lines(subprocess.run(cmd, capture_output=True, text=True, check=False), system)[
        -1
    ]


def _result_lines(proc: subprocess.CompletedProcess[str], what: str) -> list[dict[str, Any]]:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{what} worker failed (exit {proc.returncode})")
    return [json.loads(ln[len("RESULT ") :]) for ln in lines]


def ensure_flink_venv() -> str | None:
    """None when bench/.venv-flink has PyFlink, else how to create it."""
    if FLINK_PYTHON.exists():
        ok = subprocess.run(
            [str(FLINK_PYTHON), "-c", "import pyflink.table"], capture_output=True, check=False
        )
        if ok.returncode == 0:
            return None
    return (
        f"PyFlink venv missing: python3.11 -m venv {FLINK_VENV} && "
        f"{FLINK_PYTHON} -m pip install -r {FLINK_REQUIREMENTS}"
    )


def run_flink(args: argparse.Namespace, data: Path, queries: list[str]) -> dict[str, Any]:
    cmd = [
        str(FLINK_PYTHON),
        str(PEERS / "flink_worker.py"),
        "--data",
        str(data / "csv"),
        "--empty",
        str(data / "csv-empty"),
        "--queries",
        ",".join(queries),
        "--repeat",
        str(args.repeat),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return {r["query"]: r for r in _result_lines(proc, "flink")}


# -- report ------------------------------------------------------------------------------
def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", default=",".join(DEFAULT_QUERIES), help="comma list or 'all'")
    p.add_argument("--events", type=int, default=10_000_000, help="events, stateless queries")
    p.add_argument(
        "--stateful-events", type=int, default=2_000_000, help="events, stateful queries"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compression",
        default="zstd",
        choices=["zstd", "lz4", "snappy", "uncompressed"],
        help="codec of the generated Parquet input (read by Sluice and Bytewax)",
    )
    p.add_argument("--data-root", type=Path, default=Path("/tmp/sluice-nexmark-peers"))
    p.add_argument("--repeat", type=int, default=1, help="runs per system (median shown)")
    p.add_argument("--parallelism", type=int, default=1, help="Sluice parallelism")
    p.add_argument("--bytewax-batch", type=int, default=8192, help="TestingSource batch size")
    p.add_argument("--skip", default="", help="systems to skip: comma list of flink,bytewax,sluice")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="100k events, a smoke run")
    p.add_argument("--worker", choices=["sluice", "bytewax"], help=argparse.SUPPRESS)
    p.add_argument("--query", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.events = args.stateful_events = 100_000

    queries = (
        DEFAULT_QUERIES + EXTRA_QUERIES
        if args.queries == "all"
        else [q.strip().lower() for q in args.queries.split(",") if q.strip()]
    )
    known = set(DEFAULT_QUERIES + EXTRA_QUERIES)
    bad = [q for q in queries if q not in known]
    if bad:
        raise SystemExit(
            f"--queries: unknown {', '.join(bad)}; known: {', '.join(sorted(known, key=lambda q: int(q[1:])))}"
        )
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {"flink", "bytewax", "sluice"}
    if unknown:
        raise SystemExit(f"--skip: unknown system(s) {', '.join(sorted(unknown))}")

    print_header("nexmark_peers: Nexmark on Sluice, PyFlink SQL and Bytewax")
    notes: list[str] = []
    flink_missing = None if "flink" in skip else ensure_flink_venv()
    if flink_missing:
        notes.append(f"flink skipped: {flink_missing}")
        skip.add("flink")
    sluice_missing = None if "sluice" in skip else sluice_available()
    if sluice_missing:
        notes.append(f"sluice skipped: {sluice_missing}")
        skip.add("sluice")
    for n in notes:
        print(f"   {n}")

    by_size: dict[int, list[str]] = {}
    for q in queries:
        by_size.setdefault(args.events if q in LARGE else args.stateful_events, []).append(q)

    results: dict[str, dict[str, Any]] = {}
    for n_events, qs in by_size.items():
        data = prepare_data(n_events, args.seed, args.data_root, args.compression)
        events = total_events(data)
        flink = {} if "flink" in skip else run_flink(args, data, qs)
        for q in qs:
            r: dict[str, Any] = {"query": q, "events": events}
            if q in flink:
                f = flink[q]
                full = median_run(f["runs"])
                net = full["wall_s"] - f["overhead_wall_s"]
                r["flink"] = {
                    "wall_s": full["wall_s"],
                    "overhead_s": f["overhead_wall_s"],
                    "net_s": net,
                    "cpu_s": full["cpu_s"] - f["overhead_cpu_s"],
                    "events_per_s": events / net if net > 0 else None,
                    "rows": f["rows"],
                    "version": f["flink"],
                }
            if "bytewax" not in skip and q in BYTEWAX_INPUT:
                b = spawn(args, "bytewax", q, data)
                m = median_run(b["runs"])
                r["bytewax"] = {
                    **m,
                    "events_per_s": events / m["wall_s"],
                    "rows": b["rows"],
                    "late": b["late"],
                }
            if "sluice" not in skip:
                s = spawn(args, "sluice", q, data)
                m = median_run(s["runs"])
                r["sluice"] = {
                    **m,
                    "events_per_s": events / m["wall_s"],
                    "rows": s["rows"],
                    "floor_s": s.get("floor_s"),
                }
            results[q] = r
            print(f"   {q}: {_short(r)}", flush=True)
    print()
    report(queries, results)
    if args.json:
        args.json.write_text(json.dumps({"notes": notes, "results": results}, indent=2))
        print(f"\nwrote {args.json}")
    if any(_check(results[q]) == "MISMATCH" for q in queries):
        raise SystemExit("MISMATCH: systems disagree on a query's result row count")


def _rate(r: dict[str, Any], system: str) -> float | None:
    v = r.get(system, {}).get("events_per_s")
    return float(v) if v else None


def _rows(r: dict[str, Any], system: str) -> int | None:
    return r.get(system, {}).get("rows")


def _check(r: dict[str, Any]) -> str:
    counts = {s: _rows(r, s) for s in ("flink", "bytewax", "sluice") if _rows(r, s) is not None}
    late = r.get("bytewax", {}).get("late", 0)
    if len(counts) < 2:
        return "-"
    if len(set(counts.values())) > 1 or late:
        return "MISMATCH"
    return "OK"


def _short(r: dict[str, Any]) -> str:
    return ", ".join(
        f"{s} {_rate(r, s) or 0:,.0f} ev/s ({_rows(r, s)} rows)"
        for s in ("flink", "bytewax", "sluice")
        if s in r
    )


def _ceiling(r: dict[str, Any]) -> str:
    """Bytewax's wall time over the time to only decode the query's input columns:
    the highest sluice/bytewax ratio any engine reading these files could reach."""
    floor = r.get("sluice", {}).get("floor_s")
    bw = r.get("bytewax", {}).get("wall_s")
    return f"{bw / floor:.1f}x" if floor and bw else "-"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def report(queries: list[str], results: dict[str, dict[str, Any]]) -> None:
    rows = []
    for q in queries:
        r = results[q]
        fl, bw, sl = _rate(r, "flink"), _rate(r, "bytewax"), _rate(r, "sluice")
        rows.append(
            [
                q,
                r["events"],
                fl if fl else "-",
                bw if bw else "-",
                sl if sl else "-",
                _ratio(sl, fl),
                _ratio(sl, bw),
                _ceiling(r),
                "/".join(str(_rows(r, s)) for s in ("flink", "bytewax", "sluice")),
                _check(r),
            ]
        )
    print_table(
        [
            "query",
            "events",
            "flink ev/s",
            "bytewax ev/s",
            "sluice ev/s",
            "sluice/flink",
            "sluice/bytewax",
            "decode-only/bytewax",
            "rows flink/bytewax/sluice",
            "check",
        ],
        rows,
    )
    print()
    for q in queries:
        f = results[q].get("flink")
        if f:
            print(
                f"   flink {q}: job {f['wall_s']:.2f} s - same job on empty input "
                f"{f['overhead_s']:.2f} s = {f['net_s']:.2f} s net "
                f"({100 * f['overhead_s'] / f['wall_s']:.0f}% overhead subtracted), "
                f"cpu {f['cpu_s']:.1f} s"
            )
    for q in queries:
        for s in ("bytewax", "sluice"):
            x = results[q].get(s)
            if x:
                extra = (
                    f", decoding its input alone {x['floor_s']:.2f} s" if x.get("floor_s") else ""
                )
                print(f"   {s} {q}: wall {x['wall_s']:.2f} s, cpu {x['cpu_s']:.2f} s{extra}")
    print(f"   bytewax: {BYTEWAX_MISSING}")


if __name__ == "__main__":
    main()
