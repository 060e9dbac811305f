"""``sluice nexmark generate|run|bench``: the Nexmark benchmark from the shell.

>>> import tempfile, pathlib
>>> from typer.testing import CliRunner
>>> d = tempfile.mkdtemp()
>>> r = CliRunner().invoke(nexmark_app, ["generate", "--events", "1000", "--out", d])
>>> r.exit_code, sorted(p.name for p in pathlib.Path(d).iterdir())
(0, ['auction.parquet', 'bid.parquet', 'person.parquet'])
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sluice.cli.console import console, err_console, handle_errors
from sluice.errors import ConfigError

nexmark_app = typer.Typer(
    name="nexmark",
    help="The Nexmark benchmark: generate its streams, run its queries, measure them.",
    no_args_is_help=True,
)

DEBUG = typer.Option("--debug", help="Show full tracebacks.")


@nexmark_app.command()
def generate(
    events: Annotated[int, typer.Option("--events", "-n", help="Number of events.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same events).")] = 0,
    rate: Annotated[
        float | None, typer.Option(help="Event-time rate in events/s (spaces the timestamps).")
    ] = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Write the person, auction and bid streams as Parquet files in OUT."""
    from sluice.nexmark.generator import NexmarkConfig, write_parquet

    with handle_errors(debug):
        kw: dict[str, Any] = {"events": events, "seed": seed}
        if rate is not None:
            kw["rate"] = rate
        t0 = time.perf_counter()
        paths = write_parquet(NexmarkConfig(**kw), out)
        dt = time.perf_counter() - t0
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        console.print(
            f"wrote {events:,} events to {out} in {dt:.2f} s "
            f"({events / dt if dt else 0:,.0f} events/s): "
            + ", ".join(f"{Path(p).name} {sizes[k] / 1e6:.1f} MB" for k, p in paths.items())
        )


def _measure(
    query: str,
    *,
    events: int | None,
    data_dir: Path | None,
    seed: int,
    parallelism: int,
    out: Path | None,
) -> dict[str, Any]:
    from sluice.nexmark.queries import run_query

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    r = run_query(query, data_dir, events=events, seed=seed, parallelism=parallelism, out=out)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "query": r.query,
        "events": r.events,
        "rows": r.rows,
        "seconds": round(r.seconds, 4),
        "events_per_s": round(r.events_per_second),
        "cpu_s": round(cpu, 3),
        "events_per_cpu_s": round(r.events / cpu) if cpu > 0 else None,
        "peak_rss_mb": round(ru1.ru_maxrss / 1024, 1),
        "parallelism": parallelism,
    }


def _check_source(events: int | None, data_dir: Path | None) -> None:
    if (events is None) == (data_dir is None):
        raise ConfigError("give either --events N (generate inside the job) or --data-dir DIR")


@nexmark_app.command("run")
def run_cmd(
    query: Annotated[str, typer.Argument(help="Query: q0 ... q22.")],
    events: Annotated[
        int | None, typer.Option("--events", "-n", help="Generate this many events in the job.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Read the Parquet files of `sluice nexmark generate`.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the generated events.")] = 0,
    parallelism: Annotated[int, typer.Option("--parallelism", "-p")] = 1,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the result rows (Parquet).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Run one query and print events/s, wall time and peak memory."""
    with handle_errors(debug):
        _check_source(events, data_dir)
        m = _measure(
            query, events=events, data_dir=data_dir, seed=seed, parallelism=parallelism, out=out
        )
        if as_json:
            typer.echo(json.dumps(m))
        else:
            console.print(
                f"{m['query']}: {m['events']:,} events -> {m['rows']:,} rows in "
                f"{m['seconds']:.2f} s: {m['events_per_s']:,} events/s, "
                f"{m['cpu_s']:.2f} CPU s, peak RSS {m['peak_rss_mb']:,.0f} MB"
                + (f"; results in {out}" if out is not None else "")
            )


@nexmark_app.command()
def bench(
    queries: Annotated[
        list[str] | None,
        typer.Argument(help="Queries to run, e.g. q0 q5 or q0,q5 (default: all)."),
    ] = None,
    events: Annotated[
        int | None, typer.Option("--events", "-n", help="Generate this many events per query.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Read the Parquet files of `sluice nexmark generate`.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the generated events.")] = 0,
    parallelism: Annotated[int, typer.Option("--parallelism", "-p")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Run several queries, each in a fresh process (so peak memory is its own),
    and print events/s, wall time, CPU time and peak memory per query."""
    from sluice.nexmark.queries import QUERIES, get

    with handle_errors(debug):
        _check_source(events, data_dir)
        asked = [q for arg in queries or [] for q in arg.split(",") if q.strip()]
        names = [get(q.strip()).name for q in asked] if asked else list(QUERIES)
        rows = []
        for q in names:
            args = [sys.executable, "-m", "sluice.cli.main", "nexmark", "run", q, "--json"]
            args += ["--seed", str(seed), "--parallelism", str(parallelism)]
            args += ["--events", str(events)] if events is not None else []
            args += ["--data-dir", str(data_dir)] if data_dir is not None else []
            proc = subprocess.run(args, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                err_console.print(f"[red]{q} failed:[/] {proc.stderr.strip()[-2000:]}")
                rows.append({"query": q, "error": proc.stderr.strip()[-500:]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            if not as_json:
                err_console.print(f"[dim]{q}: {rows[-1]['events_per_s']:,} events/s[/]")
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        t = Table(title=f"Nexmark, parallelism {parallelism}")
        for col in ("query", "events", "rows", "wall s", "events/s", "events/CPU s", "peak MB"):
            t.add_column(col, justify="left" if col == "query" else "right")
        for r in rows:
            if "error" in r:
                t.add_row(r["query"], "failed", "", "", "", "", "")
                continue
            t.add_row(
                r["query"],
                f"{r['events']:,}",
                f"{r['rows']:,}",
                f"{r['seconds']:.2f}",
                f"{r['events_per_s']:,}",
                f"{r['events_per_cpu_s']:,}" if r["events_per_cpu_s"] else "-",
                f"{r['peak_rss_mb']:,.0f}",
            )
        console.print(t)
        if any("error" in r for r in rows):
            raise typer.Exit(1)
