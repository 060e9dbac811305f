"""Synthetic sources: rows made by a vectorized function, optionally rate-limited.

Rows are numbered ``0, 1, 2, ...`` and cut into blocks of ``batch_size``; block
``b`` belongs to split ``b % n_splits``. Every split therefore walks through the
row numbers at the same pace, and the multiset of rows produced does not depend
on the parallelism: a benchmark or test gets the same data on 1 or 8 subtasks.

Split ``i`` is named ``"gen-<i>"``; its checkpoint state is its block and the
rows of it already emitted, so a job resumes with the same number of splits.

A *sparse* generator numbers positions rather than rows: ``fn(start, n)`` returns
the rows of positions ``start .. start + n - 1``, which may be fewer than ``n``
(a per-kind Nexmark source keeps one kind of event among the event ids). Blocks,
``count``, ``rate`` and checkpoint positions then all count positions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from sluice.connectors.base import ReadBatch, Source, SplitReader
from sluice.errors import ConfigError

#: ``fn(start, n)`` returns the rows ``start .. start + n - 1`` as a DataFrame.
RowFunction = Callable[[int, int], pl.DataFrame]


class _GeneratorSplit(SplitReader):
    """Reads blocks ``index, index + n_splits, ...`` of the row numbers. Its
    checkpoint state is the block it is in and the rows of it already emitted."""

    def __init__(
        self,
        fn: RowFunction,
        index: int,
        n_splits: int,
        block: int,
        count: int | None,
        rate: float | None,
        sparse: bool = False,
    ) -> None:
        self.split_id = f"gen-{index}"
        self.fn = fn
        self.index = index
        self.n_splits = n_splits
        self.block = block
        self.count = count
        self.rate = rate
        self.sparse = sparse
        self._block_no = index  # current block
        self._in_block = 0  # rows of the current block already emitted
        self._emitted = 0
        self._started: float | None = None
        self._paced_from = 0  # rows emitted when the rate clock started
        self.finished = self._end_of_block() == self._block_start()

    def _block_start(self) -> int:
        start = self._block_no * self.block
        return start if self.count is None else min(start, self.count)

    def _end_of_block(self) -> int:
        end = (self._block_no + 1) * self.block
        return end if self.count is None else min(end, self.count)

    def position(self) -> int:
        """Rows (positions, if sparse) emitted by this split so far (for checkpoints)."""
        return self._emitted

    def snapshot(self) -> dict[str, Any]:
        """``{"n_splits", "block", "in_block", "emitted"}``."""
        return {
            "n_splits": self.n_splits,
            "block": self._block_no,
            "in_block": self._in_block,
            "emitted": self._emitted,
        }

    def restore(self, state: dict[str, Any]) -> None:
        if int(state["n_splits"]) != self.n_splits:
            raise ConfigError(
                f"generator: the checkpoint was taken with {state['n_splits']} splits, this "
                f"run has {self.n_splits}; resume with the same parallelism and "
                "parallelism_splits (rows are dealt to splits by their number)"
            )
        self._block_no = int(state["block"])
        self._in_block = int(state["in_block"])
        self._emitted = int(state["emitted"])
        self._started = None
        self.finished = self._end_of_block() <= self._block_start() + self._in_block

    def _due(self) -> int:
        if self.rate is None:
            return 1 << 62
        now = time.perf_counter()
        if self._started is None:  # the rate counts from the (re)start, not from row 0
            self._started = now
            self._paced_from = self._emitted
        return int((now - self._started) * self.rate) + 1 - (self._emitted - self._paced_from)

    def poll(self, max_rows: int) -> ReadBatch | None:
        if self.finished:
            return None
        start = self._block_start() + self._in_block
        end = self._end_of_block()
        n = min(end - start, max(1, max_rows), self._due())
        if n <= 0:
            return None
        df = self.fn(start, n)
        if not isinstance(df, pl.DataFrame) or (df.height != n and not self.sparse):
            got = f"{df.height} rows" if isinstance(df, pl.DataFrame) else type(df).__name__
            want = "a DataFrame" if self.sparse else f"a DataFrame of n={n} rows"
            raise ConfigError(f"generator function must return {want} for start={start}, got {got}")
        self._emitted += n
        self._in_block += n
        if start + n >= end:
            self._block_no += self.n_splits
            self._in_block = 0
            if self._end_of_block() <= self._block_start():
                self.finished = True
        return ReadBatch(df, None, first_line=start)


class GeneratorSource(Source):
    """Rows made by ``fn(start, n)`` (see :func:`generator`)."""

    name = "generator"
    replayable = True

    def __init__(
        self,
        fn: RowFunction,
        *,
        rate: float | None = None,
        count: int | None = None,
        batch_size: int = 10_000,
        parallelism_splits: int = 1,
        sparse: bool = False,
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"generator: fn must be callable, got {type(fn).__name__}")
        if rate is not None and rate <= 0:
            raise ConfigError(f"generator: rate must be > 0 rows per second, got {rate}")
        if count is not None and count < 0:
            raise ConfigError(f"generator: count must be >= 0, got {count}")
        if batch_size < 1:
            raise ConfigError(f"generator: batch_size must be >= 1, got {batch_size}")
        if parallelism_splits < 1:
            raise ConfigError(
                f"generator: parallelism_splits must be >= 1, got {parallelism_splits}"
            )
        self.fn = fn
        self.rate = None if rate is None else float(rate)
        self.count = count
        self.batch_size = int(batch_size)
        self.parallelism_splits = int(parallelism_splits)
        self.sparse = bool(sparse)
        self.bounded = count is not None
        # Unthrottled splits cut full batches already; throttled ones emit what is
        # due at each poll, which the engine's adaptive batching gathers.
        self.coalesce = rate is not None

    def create_splits(self, parallelism: int) -> list[SplitReader]:
        n = max(1, parallelism) * self.parallelism_splits
        rate = None if self.rate is None else self.rate / n
        return [
            _GeneratorSplit(self.fn, i, n, self.batch_size, self.count, rate, self.sparse)
            for i in range(n)
        ]


def generator(
    fn: RowFunction,
    *,
    rate: float | None = None,
    count: int | None = None,
    batch_size: int = 10_000,
    parallelism_splits: int = 1,
    sparse: bool = False,
) -> GeneratorSource:
    """A synthetic source: ``fn(start, n)`` returns rows ``start .. start + n - 1``.

    Parameters
    ----------
    fn
        A vectorized function of the first row number and the number of rows,
        returning a DataFrame of exactly ``n`` rows. It must depend only on the
        row numbers, so that the output is deterministic.
    rate
        Rows per second for the whole source (``None``: as fast as possible).
        A split emits only the rows that are due by the wall clock; it never
        sleeps in ``poll``.
    count
        Total number of rows (``None``: unbounded).
    batch_size
        Rows per block; block ``b`` is read by split ``b % n_splits``.
    parallelism_splits
        Splits per subtask (``n_splits = parallelism * parallelism_splits``).
    sparse
        ``fn`` may return fewer rows than ``n`` (the rows of some positions
        only); ``rate``, ``count``, ``batch_size`` and checkpoints count positions.

    The multiset of rows does not depend on the parallelism.

    >>> import polars as pl
    >>> import sluice as sl
    >>> def squares(start: int, n: int) -> pl.DataFrame:
    ...     i = pl.int_range(start, start + n, eager=True)
    ...     return pl.DataFrame({"i": i, "sq": i * i})
    >>> flow, out = sl.Flow("gen"), sl.sinks.collect()
    >>> flow.source(sl.sources.generator(squares, count=4)).sink(out)
    >>> _ = flow.run()
    >>> out.to_polars()["sq"].to_list()
    [0, 1, 4, 9]
    """
    return GeneratorSource(
        fn,
        rate=rate,
        count=count,
        batch_size=batch_size,
        parallelism_splits=parallelism_splits,
        sparse=sparse,
    )


# -- the synthetic benchmark stream ------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finalizer applied elementwise (uint64 in, uint64 out)."""
    z = x.astype(np.uint64, copy=True)
    z += _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def synthetic_rows(
    start: int,
    n: int,
    *,
    keys: int = 1000,
    seed: int = 0,
    start_ms: int = 0,
    events_per_ms: int = 100,
) -> pl.DataFrame:
    """Rows ``start .. start + n - 1`` of :func:`synthetic` (a pure function of the index).

    >>> synthetic_rows(0, 3, keys=10).columns
    ['key', 'value', 'ts']
    >>> synthetic_rows(5, 2).equals(synthetic_rows(0, 7).slice(5))
    True
    """
    idx = np.arange(start, start + n, dtype=np.uint64)
    salt = splitmix64(np.asarray([seed & 0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64))[0]
    h1 = splitmix64(idx ^ salt)
    h2 = splitmix64(h1)
    key = (h1 % np.uint64(keys)).astype(np.int64)
    value = (h2 >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    ts = start_ms + np.arange(start, start + n, dtype=np.int64) // events_per_ms
    return pl.DataFrame({"key": key, "value": value, "ts": ts})


def synthetic(
    *,
    keys: int = 1000,
    rate: float | None = None,
    count: int | None = None,
    seed: int = 0,
    start_ms: int = 0,
    events_per_ms: int = 100,
    batch_size: int = 10_000,
    parallelism_splits: int = 1,
) -> GeneratorSource:
    """A deterministic benchmark stream with columns ``key``, ``value`` and ``ts``.

    Row ``i`` has ``key`` in ``[0, keys)`` and ``value`` in ``[0, 1)``, both from a
    SplitMix64 hash of ``i`` and ``seed`` (so any split computes the same rows as
    the whole), and ``ts = start_ms + i // events_per_ms`` (Int64 milliseconds).

    >>> import sluice as sl
    >>> flow, out = sl.Flow("syn"), sl.sinks.collect()
    >>> flow.source(sl.sources.synthetic(keys=10, count=1000), time="ts").sink(out)
    >>> _ = flow.run()
    >>> df = out.to_polars()
    >>> df.height, df["ts"].max(), 0 <= df["key"].min() and df["key"].max() < 10
    (1000, 9, True)
    """
    if keys < 1:
        raise ConfigError(f"synthetic: keys must be >= 1, got {keys}")
    if events_per_ms < 1:
        raise ConfigError(f"synthetic: events_per_ms must be >= 1, got {events_per_ms}")

    def rows(start: int, n: int) -> pl.DataFrame:
        return synthetic_rows(
            start, n, keys=keys, seed=seed, start_ms=start_ms, events_per_ms=events_per_ms
        )

    src = generator(
        rows, rate=rate, count=count, batch_size=batch_size, parallelism_splits=parallelism_splits
    )
    src.name = "synthetic"
    return src


__all__ = ["GeneratorSource", "generator", "splitmix64", "synthetic", "synthetic_rows"]
