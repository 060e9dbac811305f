"""In-memory sources: lists of dicts, DataFrames, Arrow tables, iterators."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import polars as pl

from sluice.connectors.base import ReadBatch, ReaderContext, Source, SplitReader

_CHUNK = 65_536


class _FrameSplit(SplitReader):
    """Reads chunks ``index, index + n, index + 2n, ...`` of a DataFrame."""

    def __init__(self, df: pl.DataFrame, index: int, n: int, chunk: int) -> None:
        self.df = df
        # the chunks a split reads depend on the parallelism, so the id says both
        self.split_id = f"{index}/{n}"
        self.index = index
        self.n = n
        self.chunk = chunk
        self.next_chunk = index
        self.finished = df.height <= index * chunk

    def poll(self, max_rows: int) -> ReadBatch | None:
        start = self.next_chunk * self.chunk
        if start >= self.df.height:
            self.finished = True
            return None
        self.next_chunk += self.n
        out = self.df.slice(start, self.chunk)
        if self.next_chunk * self.chunk >= self.df.height:
            self.finished = True
        return ReadBatch(out, None, first_line=start)

    def snapshot(self) -> dict[str, Any]:
        return {"next_chunk": self.next_chunk}

    def restore(self, state: dict[str, Any]) -> None:
        self.next_chunk = int(state["next_chunk"])
        self.finished = self.next_chunk * self.chunk >= self.df.height


class MemorySource(Source):
    """Rows held in memory: a DataFrame, an Arrow table or a list of dicts.

    With parallelism ``p`` the rows are cut into chunks of ``batch_size`` and
    chunk ``i`` goes to split ``i % p`` (so all splits advance through time
    together). Replayable.

    >>> import sluice as sl
    >>> src = sl.sources.memory([{"user": "a", "ts": 1}, {"user": "b", "ts": 2}])
    >>> src.frame.height
    2
    """

    name = "memory"
    replayable = True
    bounded = True
    coalesce = False

    def __init__(self, data: Any, *, batch_size: int = _CHUNK, name: str = "memory") -> None:
        self.frame = to_frame(data)
        self.batch_size = max(1, int(batch_size))
        self.name = name

    def create_splits(self, parallelism: int) -> list[SplitReader]:
        return [
            _FrameSplit(self.frame, i, parallelism, self.batch_size) for i in range(parallelism)
        ]

    def default_parallelism(self) -> int:
        return 1


def to_frame(data: Any) -> pl.DataFrame:
    """Convert supported in-memory data to a DataFrame."""
    if isinstance(data, pl.DataFrame):
        return data
    try:
        import pyarrow as pa

        if isinstance(data, pa.Table | pa.RecordBatch):
            out = pl.from_arrow(data)
            assert isinstance(out, pl.DataFrame)
            return out
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pass
    if isinstance(data, Mapping):
        return pl.DataFrame(dict(data))
    if isinstance(data, list):
        return pl.DataFrame(data, infer_schema_length=None)
    raise TypeError(
        f"cannot read {type(data).__name__} as an in-memory source; "
        "give a list of dicts, a Polars DataFrame, an Arrow table or an iterator"
    )


_END = object()


class _IteratorSplit(SplitReader):
    """Pulls from a user iterator in a background thread (it may block)."""

    def __init__(self, it: Iterable[Any], capacity: int) -> None:
        self.split_id = "0"
        self._it = it
        self._q: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._row = 0

    def open(self, ctx: ReaderContext) -> None:
        self._thread = threading.Thread(target=self._pump, name="sluice-iterator", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for item in self._it:
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._q.put(_END)
        except BaseException as e:  # surfaced on the next poll
            self._q.put(e)

    def poll(self, max_rows: int) -> ReadBatch | None:
        rows: list[dict[str, Any]] = []
        frames: list[pl.DataFrame] = []
        n = 0
        while n < max_rows:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                self.finished = True
                break
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, pl.DataFrame):
                if rows:
                    frames.append(pl.DataFrame(rows, infer_schema_length=None))
                    rows = []
                frames.append(item)
                n += item.height
            else:
                rows.append(item)
                n += 1
        if rows:
            frames.append(pl.DataFrame(rows, infer_schema_length=None))
        if not frames:
            return None
        df = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        first = self._row
        self._row += df.height
        return ReadBatch(df, None, first_line=first)

    def close(self) -> None:
        self._stop.set()


class IteratorSource(Source):
    """Rows (dicts) or DataFrames from a Python iterator, read in a background
    thread so a blocking iterator does not stall the job. Not replayable."""

    name = "iterator"
    replayable = False
    max_parallelism = 1

    def __init__(
        self, it: Iterable[Any] | Iterator[Any], *, bounded: bool = True, capacity: int = 100_000
    ) -> None:
        self.it = it
        self.bounded = bounded
        self.capacity = capacity

    def create_splits(self, parallelism: int) -> list[SplitReader]:
        return [_IteratorSplit(self.it, self.capacity)]


def memory(data: Any, *, batch_size: int = _CHUNK, name: str = "memory") -> Source:
    """An in-memory source from a DataFrame, Arrow table, list of dicts or iterator.

    >>> import sluice as sl
    >>> flow = sl.Flow("demo")
    >>> out = sl.sinks.collect()
    >>> flow.source(sl.sources.memory([{"x": 1}, {"x": 2}])).sink(out)
    >>> _ = flow.run()
    >>> out.to_polars()["x"].to_list()
    [1, 2]
    """
    if isinstance(data, pl.DataFrame | list | Mapping) or _is_arrow(data):
        return MemorySource(data, batch_size=batch_size, name=name)
    if isinstance(data, Iterable):
        src = IteratorSource(data)
        src.name = name if name != "memory" else "iterator"
        return src
    return MemorySource(data, batch_size=batch_size, name=name)


def _is_arrow(data: Any) -> bool:
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover
        return False
    return isinstance(data, pa.Table | pa.RecordBatch)
