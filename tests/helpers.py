"""Test helpers: run a small flow and get its output as a DataFrame."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

import sluice as sl


def run_collect(
    build: Callable[[sl.Flow], sl.Stream],
    *,
    parallelism: int = 1,
    **flow_kwargs: Any,
) -> pl.DataFrame:
    """Build a flow with ``build(flow) -> stream``, run it, return the stream's rows."""
    flow = sl.Flow("test", parallelism=parallelism, **flow_kwargs)
    out = sl.sinks.collect()
    build(flow).sink(out)
    flow.run()
    return out.to_polars()


def same_rows(a: pl.DataFrame, b: pl.DataFrame, *, tol: float | None = None) -> bool:
    """Multiset equality of rows (column order of ``b`` follows ``a``)."""
    if a.height != b.height or set(a.columns) != set(b.columns):
        return False
    if a.height == 0:
        return True
    b = b.select(a.columns)
    cols = a.columns
    sa = a.sort(cols, nulls_last=True)
    sb = b.sort(cols, nulls_last=True)
    if tol is None:
        return sa.equals(sb)
    from polars.testing import assert_frame_equal

    try:
        assert_frame_equal(sa, sb, check_dtypes=False, abs_tol=tol)
    except AssertionError:
        return False
    return True


class StopAfter(sl.sinks.CollectSink):
    """A collect sink that stops its flow (cleanly) once it holds ``n`` batches:
    the way tests interrupt a job at a chosen point and then resume it."""

    def __init__(self, flow: sl.Flow, n: int) -> None:
        super().__init__()
        self.flow = flow
        self.n = n

    def create_writer(self, subtask: int, parallelism: int) -> Any:
        w = super().create_writer(subtask, parallelism)
        orig = w.write

        def write(batch: pl.DataFrame) -> None:
            orig(batch)
            if len(self.batches) >= self.n:
                self.flow.stop()

        w.write = write  # type: ignore[method-assign]
        return w


def run_with_stops(
    build: Callable[[sl.Flow], sl.Stream], checkpoint_dir: Any, stop_after: Callable[[int], int]
) -> tuple[pl.DataFrame, int]:
    """Run the job ``build`` makes at parallelism 1, stopping it (a final
    checkpoint in ``checkpoint_dir``) after ``stop_after(attempt)`` output batches
    and resuming it, until it finishes. Returns all output, in order, and the
    number of stops."""
    parts = []
    for attempt in range(200):
        f = sl.Flow("job")
        sink = StopAfter(f, stop_after(attempt))
        build(f).sink(sink)
        res = f.run(checkpoint_dir=checkpoint_dir, checkpoint_interval=None)
        parts.append(sink.to_polars())
        if not res.stopped:
            got = pl.concat([p for p in parts if p.height], how="diagonal_relaxed")
            return got, attempt
    raise AssertionError("the job never finished")


def rss_growth(script: str, backend: str, n: int, state_dir: Any) -> int:
    """Run a memory-measuring ``script`` (``python -c script backend n state_dir``)
    in a fresh interpreter, so other tests' allocations do not count; it prints
    ``{"growth": bytes}`` as its last line."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", script, backend, str(n), str(state_dir)],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root / "src")},
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["growth"])
