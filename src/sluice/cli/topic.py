"""``sluice topic ...``, ``sluice produce`` and ``sluice consume``: the embedded log from
the shell. Every command works on a data directory: ``--data-dir``, else
``$SLUICE_HOME``, else ``~/.sluice``.

>>> import tempfile
>>> from typer.testing import CliRunner
>>> d = tempfile.mkdtemp()
>>> r = CliRunner().invoke(log_app, ["topic", "create", "orders", "--partitions", "2", "--data-dir", d])
>>> r.output.strip()
"created topic 'orders' (2 partitions, retention 7d, compression none)"
>>> CliRunner().invoke(log_app, ["produce", "orders", "--key-field", "id", "--data-dir", d],
...                    input='{"id": 1}\\n{"id": 2}\\n').exit_code
0
>>> print(CliRunner().invoke(log_app, ["consume", "orders", "--data-dir", d]).output, end="")
{"id": 1}
{"id": 2}
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any, BinaryIO

import numpy as np
import polars as pl
import pyarrow as pa
import typer
from rich.table import Table

from sluice.cli.console import EXIT_INTERRUPTED, console, err_console, handle_errors
from sluice.errors import ConfigError
from sluice.log import Log
from sluice.log.config import _fmt_bytes
from sluice.log.consumer import parse_start
from sluice.log.format import as_binary, binary_parts

DATA_DIR = typer.Option(
    "--data-dir",
    envvar="SLUICE_HOME",
    help="Data directory of the log (default: $SLUICE_HOME, else ~/.sluice).",
    show_default=False,
)
DEBUG = typer.Option("--debug", envvar="SLUICE_DEBUG", help="Show full tracebacks on errors.")
_CHUNK_LINES = 20_000

topic_app = typer.Typer(
    name="topic",
    help="Create, list, describe, alter and delete topics of the embedded log.",
    no_args_is_help=True,
)


def _settings(**opts: Any) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if v is not None}


def _schema(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        schema = json.loads(text)
    except ValueError as e:
        raise ConfigError(
            f'--schema must be a JSON object such as \'{{"id": "int"}}\': {e}'
        ) from None
    return schema


@topic_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    partitions: Annotated[int, typer.Option("--partitions", "-p", min=1)] = 1,
    retention: Annotated[
        str | None, typer.Option(help="Delete segments older than this (7d, 12h; 'forever').")
    ] = None,
    retention_bytes: Annotated[
        str | None, typer.Option(help="Bound each partition's size (10GB, 512MiB).")
    ] = None,
    compression: Annotated[str, typer.Option(help="none, zstd or lz4.")] = "none",
    compact: Annotated[
        bool, typer.Option("--compact", help="Keep the latest record per key.")
    ] = False,
    segment_bytes: Annotated[str | None, typer.Option(help="Roll segments at this size.")] = None,
    max_record_bytes: Annotated[str | None, typer.Option(help="Largest record accepted.")] = None,
    schema: Annotated[
        str | None,
        typer.Option(help='Declared value schema, JSON: \'{"id": "int", "note": "str?"}\'.'),
    ] = None,
    archive: Annotated[
        bool, typer.Option("--archive", help="Copy closed segments to Parquet (tiered storage).")
    ] = False,
    data_dir: Annotated[str | None, DATA_DIR] = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Create a topic."""
    with handle_errors(debug):
        log = Log(data_dir)
        extra = _settings(
            segment_bytes=segment_bytes, max_record_bytes=max_record_bytes, schema=_schema(schema)
        )
        log.create_topic(
            name,
            partitions=partitions,
            retention=retention if retention is not None else "default",
            retention_bytes=retention_bytes,
            compression=compression,
            compact=compact,
            archive=archive,
            **extra,
        )
        d = log.config(name).describe()
        console.print(
            f"created topic {name!r} ({partitions} partition{'s' * (partitions != 1)}, "
            f"retention {d['retention']}, compression {d['compression']}"
            + (", compacted" if compact else "")
            + ")",
            soft_wrap=True,
        )


@topic_app.command("list")
def list_(
    data_dir: Annotated[str | None, DATA_DIR] = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """List the topics."""
    with handle_errors(debug):
        for name in Log(data_dir).topics():
            console.print(name, soft_wrap=True)


@topic_app.command("describe")
def describe(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    data_dir: Annotated[str | None, DATA_DIR] = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Show a topic's settings and its partitions' offsets."""
    with handle_errors(debug):
        log = Log(data_dir)
        cfg = log.config(name)
        console.print(f"[bold]{name}[/]", soft_wrap=True)
        for k, v in cfg.describe().items():
            if v is not None:
                console.print(f"  {k}: {v}", soft_wrap=True)
        table = Table("partition", "start offset", "end offset", "segments")
        for p in range(cfg.partitions):
            start, end = log.offsets(name, p)
            table.add_row(str(p), str(start), str(end), str(len(log.partition(name, p).segments())))
        console.print(table)


@topic_app.command("alter")
def alter(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    partitions: Annotated[int | None, typer.Option(help="New partition count (only up).")] = None,
    retention: Annotated[str | None, typer.Option()] = None,
    retention_bytes: Annotated[str | None, typer.Option()] = None,
    compression: Annotated[str | None, typer.Option()] = None,
    max_record_bytes: Annotated[str | None, typer.Option()] = None,
    data_dir: Annotated[str | None, DATA_DIR] = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Change a topic's settings."""
    with handle_errors(debug):
        changes = _settings(
            partitions=partitions,
            retention=retention,
            retention_bytes=retention_bytes,
            compression=compression,
            max_record_bytes=max_record_bytes,
        )
        if not changes:
            raise ConfigError("nothing to change: give e.g. --retention 3d or --partitions 8")
        cfg = Log(data_dir).alter_topic(name, **changes)
        shown = cfg.describe()
        console.print(
            f"altered topic {name!r}: "
            + ", ".join(f"{k} {shown.get(k, getattr(cfg, k, ''))}" for k in changes),
            soft_wrap=True,
        )


@topic_app.command("delete")
def delete(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    data_dir: Annotated[str | None, DATA_DIR] = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Delete a topic with its data, archive and committed offsets."""
    with handle_errors(debug):
        Log(data_dir).delete_topic(name)
        console.print(f"deleted topic {name!r}", soft_wrap=True)


@topic_app.command("stats")
def stats(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    data_dir: Annotated[str | None, DATA_DIR] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Records, bytes and offsets per partition, and each group's lag."""
    with handle_errors(debug):
        rows = Log(data_dir).stats(name)
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        groups = sorted({g for r in rows for g in r["groups"]})
        table = Table(
            "partition", "start", "end", "records", "bytes", "segments",
            *[f"{g} committed / lag" for g in groups],
            title=f"topic {name}",
        )  # fmt: skip
        for r in rows:
            cells = []
            for g in groups:
                c = r["groups"].get(g)
                cells.append("-" if c is None else f"{c['committed']} / {c['lag']}")
            table.add_row(
                str(r["partition"]), str(r["start_offset"]), str(r["end_offset"]),
                str(r["records"]), _fmt_bytes(r["bytes"]), str(r["segments"]), *cells,
            )  # fmt: skip
        total = sum(r["records"] for r in rows)
        console.print(table)
        console.print(
            f"{total} records, {_fmt_bytes(sum(r['bytes'] for r in rows))}", soft_wrap=True
        )


@topic_app.command("maintain")
def maintain(
    name: Annotated[str | None, typer.Argument(help="Topic (default: all).")] = None,
    data_dir: Annotated[str | None, DATA_DIR] = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Apply retention, compaction and archiving now (they also run when segments roll)."""
    with handle_errors(debug):
        done = Log(data_dir).maintain(name)
        for topic, parts in done.items():
            deleted = sum(len(p.get("deleted_segments", [])) for p in parts)
            console.print(f"{topic}: {deleted} segment(s) deleted", soft_wrap=True)


def _read_lines(stream: BinaryIO) -> Any:
    """Chunks of non-empty lines of a binary stream."""
    pending = b""
    while True:
        block = stream.read(1 << 20)
        if not block:
            break
        data = pending + block
        cut = data.rfind(b"\n")
        if cut < 0:
            pending = data
            continue
        pending = data[cut + 1 :]
        lines = [ln for ln in data[:cut].split(b"\n") if ln.strip()]
        for i in range(0, len(lines), _CHUNK_LINES):
            yield lines[i : i + _CHUNK_LINES]
    if pending.strip():
        yield [pending]


def produce(
    topic: Annotated[str, typer.Argument(help="Topic to append to.")],
    key_field: Annotated[
        str | None, typer.Option("--key-field", "-k", help="JSON field whose value is the key.")
    ] = None,
    partition: Annotated[
        int | None, typer.Option(help="Write every record to this partition.")
    ] = None,
    timestamp_field: Annotated[
        str | None, typer.Option(help="JSON field with the record timestamp (ms or ISO-8601).")
    ] = None,
    fsync: Annotated[str, typer.Option(help="always, interval or never.")] = "interval",
    data_dir: Annotated[str | None, DATA_DIR] = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Append JSON Lines from standard input, one record per line (the line is the value)."""
    with handle_errors(debug):
        log = Log(data_dir)
        log.config(topic)
        total = 0
        first_line = 1
        with log.producer(fsync=fsync) as p:  # type: ignore[arg-type]
            for lines in _read_lines(sys.stdin.buffer):
                df = pl.DataFrame({"value": pl.Series(lines, dtype=pl.Binary)})
                fields = [f for f in (key_field, timestamp_field) if f]
                if fields:
                    df = df.with_columns(_fields(lines, fields, first_line))
                p.send_batch(
                    topic, df, value="value", key=key_field, timestamp=timestamp_field,
                    partition=partition,
                )  # fmt: skip
                total += len(lines)
                first_line += len(lines)
        err_console.print(f"produced {total} record(s) to {topic!r}", soft_wrap=True)


def _fields(lines: list[bytes], fields: list[str], first_line: int) -> list[pl.Series]:
    try:
        parsed = pl.read_ndjson(b"\n".join(lines), infer_schema_length=None)
    except Exception:
        for i, ln in enumerate(lines):
            try:
                json.loads(ln)
            except ValueError as e:
                raise ConfigError(
                    f"line {first_line + i} of the input is not JSON ({e}): {ln[:200]!r}"
                ) from None
        raise
    out = []
    for f in fields:
        if f not in parsed.columns:
            raise ConfigError(f"no field {f!r} in the input records (fields: {parsed.columns})")
        col = parsed.get_column(f)
        out.append(col if col.dtype in (pl.String, pl.Int64) else col.cast(pl.String))
    return out


def consume(
    topic: Annotated[str, typer.Argument(help="Topic to read.")],
    group: Annotated[str | None, typer.Option(help="Consumer group (commits its offsets).")] = None,
    from_: Annotated[
        str,
        typer.Option("--from", help="earliest, latest, an offset or an ISO-8601 timestamp."),
    ] = "earliest",
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep waiting for new records.")
    ] = False,
    partition: Annotated[int | None, typer.Option(help="Read only this partition.")] = None,
    max_messages: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many records.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds.")
    ] = None,
    output: Annotated[
        str,
        typer.Option("--format", help="value (the value bytes) or json (with key, offset, ...)."),
    ] = "value",
    data_dir: Annotated[str | None, DATA_DIR] = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Print records, one per line, from the start (or the group's committed offsets),
    until the end of the topic; with --follow, like tail -f."""
    if output not in ("value", "json"):
        raise typer.BadParameter("--format must be 'value' or 'json'")
    with handle_errors(debug):
        log = Log(data_dir)
        start = parse_start(from_)
        c = log.consumer(
            topic, group=group, from_=start, partitions=None if partition is None else [partition]
        )
        out = sys.stdout.buffer
        seen = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = None if max_messages is None else max_messages - seen
                df = c.poll_batch(timeout=0.1 if follow else 0.0, max_records=left or 100_000)
                if df.height:
                    out.write(_render(df, output))
                    out.flush()
                    seen += df.height
                if max_messages is not None and seen >= max_messages:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if not follow and df.height == 0 and not any(c.lag().values()):
                    break
        except KeyboardInterrupt:
            c.close()
            raise typer.Exit(EXIT_INTERRUPTED) from None
        c.close()


def _render(df: pl.DataFrame, output: str) -> bytes:
    if output == "value":
        return _join_lines(as_binary(df.get_column("value").to_arrow()))
    shown = df.select(
        "partition", "offset", "timestamp",
        pl.col("key").cast(pl.String).alias("key"),
        pl.col("value").cast(pl.String).alias("value"),
    )  # fmt: skip
    return b"".join(json.dumps(r).encode() + b"\n" for r in shown.iter_rows(named=True))


def _join_lines(values: pa.Array) -> bytes:
    """The values, each followed by a newline (tombstones print as empty lines)."""
    lengths, data = binary_parts(values)
    sizes = np.maximum(lengths, 0)
    body = np.frombuffer(data, np.uint8) if len(data) else np.zeros(0, np.uint8)
    ends = np.cumsum(sizes)
    return np.insert(body, ends, 10).tobytes()


def register(app: typer.Typer) -> None:
    """Add ``topic``, ``produce`` and ``consume`` to the ``sluice`` command."""
    app.add_typer(topic_app, name="topic")
    app.command("produce")(produce)
    app.command("consume")(consume)


#: A stand-alone app with the log commands (the ``sluice`` command registers them too).
log_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
register(log_app)

__all__ = ["consume", "log_app", "produce", "register", "topic_app"]
