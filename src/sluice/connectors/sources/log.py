"""Read a topic of the embedded log (:mod:`sluice.log`) as a Sluice source.

Each partition is one split; split ``i`` is read by subtask ``i % parallelism``.
A split remembers its offset (:meth:`LogSplitReader.position`) and can be moved
(:meth:`LogSplitReader.seek`), so the source is replayable: a checkpoint records
one offset per partition. Without ``follow`` the source reads each partition up
to the end it had when the job started and then ends; with ``follow`` it tails
the partitions forever.

``format="json"`` (default) parses each value as a JSON object into columns (a
whole batch at once with Polars); tombstones (null values) carry no row and are
skipped; a value that is not JSON is a bad record named by partition and offset.
``format="raw"`` gives the columns ``partition``, ``offset``, ``timestamp``,
``key`` and ``value`` (bytes) instead.

With ``group``, reading starts at the group's committed offsets and the
positions reached are committed when the source closes (at the end of the job
or when it is stopped): at-least-once across runs.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from sluice.connectors.base import ReadBatch, ReaderContext, Source, SplitReader
from sluice.errors import ConfigError
from sluice.log.consumer import parse_start
from sluice.log.format import as_binary, binary_parts
from sluice.log.groups import OffsetStore
from sluice.log.reader import PartitionReader, offset_for_time
from sluice.log.topic import Log

LogFormat = Literal["json", "raw"]


class LogSplitReader(SplitReader):
    """Reads one partition of a topic."""

    def __init__(self, source: LogSource, partition: int) -> None:
        self.source = source
        self.partition = partition
        self.split_id = f"{source.topic}/{partition}"
        self._reader: PartitionReader | None = None
        self._end: int | None = None
        self._ctx = ReaderContext(source.name)
        self._committed: int | None = None

    def open(self, ctx: ReaderContext) -> None:
        self._ctx = ctx
        src = self.source
        part = src.log.partition(src.topic, self.partition)
        start, end = src.log.offsets(src.topic, self.partition)
        offset: int | None = None
        if src.store is not None:
            offset = src.store.committed(src.topic, self.partition)
            self._committed = offset
        if offset is None:
            s = src.start
            if isinstance(s, int):
                offset = s
            elif s == "latest":
                offset = end
            elif s == "earliest":
                offset = start
            else:
                assert isinstance(s, datetime)
                found = offset_for_time(part, int(s.timestamp() * 1000))
                offset = end if found is None else found
        self._reader = PartitionReader(part, max(offset, start))
        self._end = None if src.follow else end
        self._check_finished()

    def position(self) -> int:
        """The offset of the next record to read (for checkpoints)."""
        return self._reader.offset if self._reader is not None else 0

    def seek(self, offset: int) -> None:
        """Continue from ``offset`` (restoring a checkpoint)."""
        assert self._reader is not None, "open() first"
        self._reader.seek(offset)
        self.finished = False
        self._check_finished()

    def snapshot(self) -> dict[str, Any]:
        """The next offset to read, and (bounded reads) the end fixed at start."""
        return {"offset": self.position(), "end": self._end}

    def restore(self, state: dict[str, Any]) -> None:
        self._end = None if state.get("end") is None else int(state["end"])
        self.seek(int(state["offset"]))

    def _check_finished(self) -> None:
        assert self._reader is not None
        if self._end is not None and self._reader.offset >= self._end:
            self.finished = True

    def poll(self, max_rows: int) -> ReadBatch | None:
        if self.finished or self._reader is None:
            return None
        limit = max(1, max_rows)
        if self._end is not None:
            limit = min(limit, self._end - self._reader.offset)
        t = self._reader.read(max_bytes=64 << 20, max_records=limit)
        self._check_finished()
        if t is None or t.num_rows == 0:
            return None
        offsets = t.column("offset").to_numpy()
        if self.source.format == "raw":
            t = t.add_column(
                0, "partition", pa.repeat(pa.scalar(self.partition, pa.int32()), t.num_rows)
            )
            df = pl.from_arrow(t)
            assert isinstance(df, pl.DataFrame)
            return ReadBatch(df, self.split_id, first_line=int(offsets[0]), lines=offsets)
        return self._json(t, offsets)

    def _json(self, t: pa.Table, offsets: np.ndarray) -> ReadBatch | None:
        values = as_binary(t.column("value").combine_chunks())
        if values.null_count:  # tombstones carry no row
            keep = np.asarray(values.is_valid())
            values = values.filter(pa.array(keep))
            offsets = offsets[keep]
        if len(values) == 0:
            return None
        lengths, data = binary_parts(values)
        body = np.frombuffer(data, np.uint8) if len(data) else np.zeros(0, np.uint8)
        text = np.insert(body, np.cumsum(lengths)[:-1], 10).tobytes()
        try:
            df = pl.read_ndjson(text, infer_schema_length=None)
            if df.height != len(values):
                raise ValueError("row count")
        except Exception:
            df, offsets = self._slow_json(values.to_pylist(), offsets)
        if df.height == 0:
            return None
        return ReadBatch(df, self.split_id, first_line=int(offsets[0]), lines=offsets)

    def _slow_json(self, raws: list[bytes], offsets: np.ndarray) -> tuple[pl.DataFrame, np.ndarray]:
        good: list[int] = []
        for i, raw in enumerate(raws):
            try:
                ok = isinstance(json.loads(raw), dict)
                reason = "the value is not a JSON object"
            except ValueError as e:
                ok, reason = False, f"the value is not JSON ({e})"
            if ok:
                good.append(i)
            else:
                self._ctx.bad_record(
                    reason,
                    file=self.split_id,
                    line=int(offsets[i]),
                    raw=raw.decode(errors="replace"),
                )
        if not good:
            return pl.DataFrame(), offsets[:0]
        frames = [pl.read_ndjson(raws[i]) for i in good]
        return pl.concat(frames, how="diagonal_relaxed"), offsets[good]

    def close(self) -> None:
        src = self.source
        if self._reader is not None:
            pos = self._reader.offset
            if src.store is not None and pos != self._committed:
                src.store.commit(src.topic, self.partition, pos)
                self._committed = pos
            self._reader.close()
            self._reader = None


class LogSource(Source):
    """A topic of the embedded log (see :func:`log`)."""

    replayable = True

    def __init__(
        self,
        topic: str,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        group: str | None = None,
        from_: Any = "earliest",
        follow: bool = False,
        format: LogFormat = "json",
        partitions: list[int] | None = None,
    ) -> None:
        if format not in ("json", "raw"):
            raise ConfigError(f"log source: format must be 'json' or 'raw', got {format!r}")
        self.log = Log(data_dir)
        self.topic = topic
        self.name = f"log:{topic}"
        cfg = self.log.config(topic)  # raises TopicNotFoundError
        self.partitions = list(range(cfg.partitions)) if partitions is None else list(partitions)
        for p in self.partitions:
            self.log.partition(topic, p)  # raises PartitionNotFoundError
        self.start = parse_start(from_)
        self.follow = bool(follow)
        self.bounded = not self.follow
        self.format = format
        self.store = OffsetStore(self.log.data_dir, group) if group is not None else None
        self.max_parallelism = len(self.partitions)

    def create_splits(self, parallelism: int) -> list[SplitReader]:
        return [LogSplitReader(self, p) for p in self.partitions]

    def __repr__(self) -> str:
        return f"LogSource({self.topic!r}, {self.log.data_dir!r}, follow={self.follow})"


def log(
    topic: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    group: str | None = None,
    from_: Any = "earliest",
    follow: bool = False,
    format: LogFormat = "json",
    partitions: list[int] | None = None,
) -> LogSource:
    """Read a topic of the embedded log, one split per partition.

    Parameters
    ----------
    topic
        The topic to read.
    data_dir
        The log's data directory (default: ``$SLUICE_HOME``, else ``~/.sluice``).
    group
        A consumer group: start from its committed offsets, commit on close.
    from_
        Where to start without a committed offset: ``"earliest"`` (default),
        ``"latest"``, an offset, or a timestamp (``datetime`` or ISO-8601).
    follow
        Tail the topic forever instead of ending at the end it had at the start.
    format
        ``"json"``: values are JSON objects, parsed into columns; ``"raw"``:
        columns ``partition``, ``offset``, ``timestamp``, ``key``, ``value``.
    partitions
        Read only these partitions.

    >>> import tempfile
    >>> import sluice as sl
    >>> from sluice.log import Log
    >>> d = tempfile.mkdtemp()
    >>> Log(d).create_topic("clicks", partitions=2)
    >>> with Log(d).producer() as p:
    ...     _ = p.send_many("clicks", [{"key": u, "value": {"user": u, "ts": 1}} for u in "ab"])
    >>> flow, out = sl.Flow("read"), sl.sinks.collect()
    >>> flow.source(log("clicks", d), time="ts").sink(out)
    >>> _ = flow.run()
    >>> sorted(out.to_polars()["user"].to_list())
    ['a', 'b']
    """
    return LogSource(
        topic,
        data_dir,
        group=group,
        from_=from_,
        follow=follow,
        format=format,
        partitions=partitions,
    )


__all__ = ["LogSource", "LogSplitReader", "log"]
