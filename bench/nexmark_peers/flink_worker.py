"""Run Nexmark SQL queries on PyFlink (local mini-cluster, parallelism 1) and time them.

Runs inside ``bench/.venv-flink`` (PyFlink pins pyarrow/numpy below the project's),
started by ``bench/nexmark_peers.py``; it imports nothing from Sluice. For each query:

* ``overhead``: the same INSERT on empty tables (same schemas, zero rows): planning,
  job submission, mini-cluster start and stop. The median of ``--overhead-runs``.
* ``full``: the INSERT on the data, into nexmark-flink's blackhole sink, ``--repeat``
  times. ``net = full - overhead`` is the steady-state processing time.
* ``rows`` (a blackhole counts nothing): for the append-only queries with small
  results (``STREAM_COUNTED``) a second streaming run into a CSV filesystem sink whose
  lines are counted; for the others ``SELECT COUNT(*) FROM (<the query's SELECT>)`` in
  batch mode on the same files, equal to the streaming result's final row count since
  the inputs are in event-time order (nothing is late).

Prints one ``RESULT {json}`` line per query.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

SQL_DIR = Path(__file__).with_name("flink")
#: Append-only queries with small results: counted from a streaming run (the others
#: by a batch ``COUNT(*)``; batch mode has no session windows, so q11 must be here).
STREAM_COUNTED = {"q2", "q3", "q5", "q7", "q8", "q11"}


def statements(text: str) -> list[str]:
    """The SQL statements of a file (``--`` comment lines dropped, split on ``;``)."""
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def query_select(name: str) -> tuple[str, str]:
    """(sink DDL, SELECT text) of query ``name`` from its ``INSERT INTO`` statement."""
    ddl, insert = statements((SQL_DIR / f"{name}.sql").read_text())
    m = re.match(r"INSERT\s+INTO\s+\w+\s+(.*)$", insert, re.S | re.I)
    if m is None:
        raise SystemExit(f"{name}.sql: second statement is not INSERT INTO ...: {insert[:60]!r}")
    return ddl, m.group(1)


def table_env(data_dir: Path, batch: bool):  # type: ignore[no-untyped-def]
    from pyflink.table import EnvironmentSettings, TableEnvironment

    settings = (
        EnvironmentSettings.in_batch_mode() if batch else EnvironmentSettings.in_streaming_mode()
    )
    env = TableEnvironment.create(settings)
    conf = env.get_config()
    conf.set("parallelism.default", "1")
    conf.set("table.exec.resource.default-parallelism", "1")
    for stmt in statements((SQL_DIR / "ddl.sql").read_text().replace("{dir}", str(data_dir))):
        env.execute_sql(stmt)
    return env


def _cpu_ticks_of_tree(root: int) -> int:
    """utime + stime (clock ticks) of ``root`` and all its descendants (the JVM)."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = int(fields[11]) + int(fields[12])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def cpu_seconds() -> float:
    return _cpu_ticks_of_tree(os.getpid()) / os.sysconf("SC_CLK_TCK")


def run_insert(env, name: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Create the sink (once per env) and run the query's INSERT; (wall s, cpu s)."""
    ddl, select = query_select(name)
    sink = re.search(r"CREATE\s+TABLE\s+(\w+)", ddl, re.I)
    assert sink is not None
    if sink.group(1) not in env.list_tables():
        env.execute_sql(ddl)
    c0, w0 = cpu_seconds(), time.perf_counter()
    env.execute_sql(f"INSERT INTO {sink.group(1)} {select}").wait()
    return time.perf_counter() - w0, cpu_seconds() - c0


def count_rows(env, name: str) -> int:  # type: ignore[no-untyped-def]
    """Rows of the query's result, by ``SELECT COUNT(*)`` in batch mode."""
    _, select = query_select(name)
    with env.execute_sql(f"SELECT COUNT(*) FROM ({select})").collect() as rows:
        return int(next(iter(rows))[0])


def count_rows_streaming(env, name: str, out: Path) -> int:  # type: ignore[no-untyped-def]
    """Rows the streaming job emits: the query into a CSV filesystem sink, lines counted.

    For append-only queries with small results (the windowed ones), so that the check
    covers Flink's streaming (watermark-driven) execution itself.
    """
    import shutil

    ddl, select = query_select(name)
    sink = f"count_{name}"
    cols = ddl[ddl.index("(") + 1 : ddl.rindex(") WITH")]
    shutil.rmtree(out, ignore_errors=True)
    env.execute_sql(
        f"CREATE TABLE {sink} ({cols}) WITH "
        f"('connector' = 'filesystem', 'path' = '{out}', 'format' = 'csv')"
    )
    env.execute_sql(f"INSERT INTO {sink} {select}").wait()
    n = 0
    for f in out.rglob("*"):
        if f.is_file() and not f.name.startswith("."):
            with f.open("rb") as fh:
                n += sum(1 for _ in fh)
    shutil.rmtree(out, ignore_errors=True)
    return n


def pyflink_version() -> str:
    from pyflink.version import __version__

    return str(__version__)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True, help="dir with person/ auction/ bid/ CSV")
    p.add_argument("--empty", type=Path, required=True, help="same layout, empty files")
    p.add_argument("--queries", required=True, help="comma-separated, e.g. q0,q1")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--overhead-runs", type=int, default=1)
    p.add_argument("--no-count", action="store_true")
    args = p.parse_args()

    t0 = time.perf_counter()
    stream_full = table_env(args.data, batch=False)
    stream_empty = table_env(args.empty, batch=False)
    batch_full = None if args.no_count else table_env(args.data, batch=True)
    startup = time.perf_counter() - t0
    # The first job of a JVM is several times slower (class loading, JIT): warm up.
    run_insert(stream_empty, "q0")
    version = pyflink_version()
    for name in args.queries.split(","):
        overhead = [run_insert(stream_empty, name) for _ in range(args.overhead_runs)]
        full = [run_insert(stream_full, name) for _ in range(args.repeat)]
        if args.no_count:
            rows = None
        elif name in STREAM_COUNTED:
            rows = count_rows_streaming(stream_full, name, args.data.parent / f"flink-{name}")
        else:
            rows = count_rows(batch_full, name)
        info = {
            "query": name,
            "flink": version,
            "startup_s": startup,
            "overhead_wall_s": statistics.median(w for w, _ in overhead),
            "overhead_cpu_s": statistics.median(c for _, c in overhead),
            "runs": [{"wall_s": w, "cpu_s": c} for w, c in full],
            "rows": rows,
        }
        print("RESULT " + json.dumps(info), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
