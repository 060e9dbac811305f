"""Helpers shared by the benchmarks: timing, machine description, tables.

Nothing here imports Polars, so a benchmark can set ``POLARS_MAX_THREADS``
before Polars is first imported.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata


@dataclass
class Timing:
    """Wall-clock and CPU seconds (user + system, all threads) of one measured region."""

    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def cores(self) -> float:
        """Average number of cores busy during the region."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@contextmanager
def measure() -> Iterator[Timing]:
    """Time the ``with`` block: wall clock and process CPU time.

    >>> with measure() as t:
    ...     _ = sum(range(1000))
    >>> t.wall_s >= 0 and t.cpu_s >= 0
    True
    """
    t = Timing()
    c0 = _cpu_seconds()
    w0 = time.perf_counter()
    try:
        yield t
    finally:
        t.wall_s = time.perf_counter() - w0
        t.cpu_s = _cpu_seconds() - c0


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def machine_info() -> dict[str, str]:
    """What the numbers were measured on (printed at the top of every benchmark)."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": f"{_cpu_model()} ({os.cpu_count()} logical CPUs)",
        "memory": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "sluice": _version("sluice"),
        "polars": _version("polars"),
        "numpy": _version("numpy"),
        "bytewax": _version("bytewax"),
        "POLARS_MAX_THREADS": os.environ.get("POLARS_MAX_THREADS", "(default)"),
    }


def print_header(title: str) -> None:
    print(f"== {title}")
    for k, v in machine_info().items():
        print(f"   {k:<19} {v}")
    print()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain-text table with right-aligned columns (the first left-aligned)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)
        )

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if v >= 1e5:
            return f"{v:,.0f}"
        if v >= 100:
            return f"{v:.1f}"
        return f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
