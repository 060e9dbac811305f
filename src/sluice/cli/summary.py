"""What ``sluice run`` prints when a job ends: per-operator counts and outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from sluice.plan.physical import PhysicalPlan
from sluice.runtime.local import JobResult

_READERS: dict[str, Callable[[Path], pl.DataFrame]] = {
    ".parquet": pl.read_parquet,
    ".pq": pl.read_parquet,
    ".jsonl": pl.read_ndjson,
    ".ndjson": pl.read_ndjson,
    ".csv": pl.read_csv,
    ".tsv": lambda p: pl.read_csv(p, separator="\t"),
}


@dataclass(frozen=True)
class Output:
    """A sink that writes files: its operator name, path and the rows it received."""

    name: str
    path: Path
    rows: int

    @property
    def files(self) -> list[Path]:
        """The complete files of the output (hidden in-progress files are left out)."""
        if self.path.is_dir():
            return sorted(
                f for f in self.path.rglob("*") if f.is_file() and not f.name.startswith((".", "_"))
            )
        return [self.path] if self.path.is_file() else []

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def preview(self, n: int) -> tuple[Path, pl.DataFrame] | None:
        """The first readable file of the output and its first ``n`` rows."""
        for f in self.files:
            reader = _READERS.get(f.suffix.lower())
            if reader is None or f.stat().st_size == 0:
                continue
            try:
                return f, reader(f).head(n)
            except Exception:  # a preview is a courtesy: never fail the command for it
                return None
        return None


def file_outputs(plan: PhysicalPlan, result: JobResult) -> list[Output]:
    """The sinks of ``plan`` that write to a path (``sl.sinks.parquet("out/")`` etc.)."""
    outs = []
    for pn in plan.nodes:
        sink: Any = pn.node.sink
        if pn.node.kind != "sink" or sink is None:
            continue
        path = getattr(sink, "path", None)
        if path is None:
            continue
        m = result.metrics.get(pn.name)
        outs.append(Output(pn.name, Path(path), m.records_in if m else 0))
    return outs


def metrics_table(plan: PhysicalPlan, result: JobResult) -> Table:
    """Rows in/out per operator, late rows dropped, dead letters and other counters."""
    table = Table(title="operators", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("operator")
    table.add_column("tasks", justify="right")
    table.add_column("rows in", justify="right")
    table.add_column("rows out", justify="right")
    table.add_column("late dropped", justify="right")
    table.add_column("dead letters", justify="right")
    table.add_column("other")
    for pn in plan.nodes:
        m = result.metrics.get(pn.name)
        if m is None:
            continue
        extra = dict(m.extra)
        dead = extra.pop("dead_letters", 0)
        other = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sorted(extra.items()))
        table.add_row(
            pn.name,
            str(pn.parallelism),
            "" if pn.node.kind == "source" else f"{m.records_in:,}",
            "" if pn.node.kind == "sink" else f"{m.records_out:,}",
            _count(m.late_dropped, "yellow"),
            _count(dead, "red"),
            other,
        )
    return table


def outputs_table(outputs: list[Output]) -> Table:
    table = Table(title="outputs", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("sink")
    table.add_column("path")
    table.add_column("rows", justify="right")
    table.add_column("files", justify="right")
    table.add_column("size", justify="right")
    for o in outputs:
        table.add_row(
            o.name, str(o.path), f"{o.rows:,}", str(len(o.files)), human_size(o.size_bytes())
        )
    return table


def preview_table(output: Output, n: int) -> Group | None:
    """The first ``n`` rows of a file output, under a heading naming the file."""
    shown = output.preview(n)
    if shown is None or shown[1].height == 0:
        return None
    file, df = shown
    table = Table(show_edge=False, pad_edge=False)
    for c in df.columns:
        table.add_column(c, justify="right" if df.schema[c].is_numeric() else "left")
    for row in df.iter_rows():
        table.add_row(*(_cell(v) for v in row))
    heading = Text.assemble((str(file), "italic"), f" (first {df.height} rows)")
    return Group(heading, table)


def render(
    console: Console,
    plan: PhysicalPlan,
    result: JobResult,
    *,
    headline: RenderableType,
    preview_rows: int = 5,
) -> None:
    """Print the end-of-job summary."""
    parts: list[RenderableType] = [headline, Text(""), metrics_table(plan, result)]
    outputs = file_outputs(plan, result)
    if outputs:
        parts += [Text(""), outputs_table(outputs)]
        if preview_rows > 0:
            for o in outputs:
                t = preview_table(o, preview_rows)
                if t is not None:
                    parts += [Text(""), t]
    console.print(Group(*parts))


def _count(n: int, style: str) -> Text:
    return Text(f"{n:,}", style=style if n else "dim")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    return "" if v is None else str(v)


def human_size(n: int) -> str:
    """Bytes as a short human-readable size (``'7.8 MB'``)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover
