"""Run one Nexmark query and measure it: :func:`run_query` and its
:class:`QueryRun` (events in, result rows out, seconds).

>>> from sluice.nexmark.runner import run_query
>>> r = run_query("q2", events=5_000)
>>> r.query, r.events, r.rows > 0
('q2', 5000, True)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from sluice.errors import ConfigError
from sluice.nexmark.inputs import STREAMS, NexmarkInput


@dataclass
class QueryRun:
    """What :func:`run_query` measured."""

    query: str
    events: int
    rows: int
    seconds: float
    result: Any

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def run_query(
    query: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    events: int | None = None,
    seed: int = 0,
    parallelism: int = 1,
    out: str | os.PathLike[str] | None = None,
    sink: Any = None,
    timeout: float | None = None,
) -> QueryRun:
    """Run one query on generated events and measure it.

    Give ``events`` to generate that many events inside the flow, or
    ``data_dir`` to read the Parquet files of ``sluice nexmark generate``.
    Results go to ``sink``, else to ``out`` (a Parquet file; q10 a directory),
    else are discarded (counted).
    """
    import sluice as sl

    # imported here, not at the top: sluice.nexmark.queries re-exports this module
    from sluice.nexmark.queries import get

    q = get(query)
    if (events is None) == (data_dir is None):
        raise ConfigError("nexmark: give either events= (generate) or data_dir= (Parquet files)")
    flow = sl.Flow(f"nexmark-{q.name}", parallelism=parallelism)
    if events is not None:
        inp = NexmarkInput.generated(flow, events=events, seed=seed, columns=q.columns)
        n_events = events
    else:
        assert data_dir is not None
        inp = NexmarkInput.files(flow, data_dir, q.columns)
        n_events = sum(
            pl.scan_parquet(Path(data_dir) / f"{k}.parquet").select(pl.len()).collect().item()
            for k in STREAMS
            if (Path(data_dir) / f"{k}.parquet").exists()
        )
    stream = q.build(inp)
    if out is not None and q.sink is not None and sink is None:
        q.sink(stream, Path(out))
    else:
        if sink is None:
            sink = sl.sinks.parquet(out) if out is not None else sl.sinks.discard()
        stream.sink(sink, name="result")
    t0 = time.perf_counter()
    result = flow.run(timeout=timeout)
    dt = time.perf_counter() - t0
    return QueryRun(q.name, n_events, result.metric("result", "records_in"), dt, result)


__all__ = ["QueryRun", "run_query"]
