"""Producing records: one at a time, or whole columnar batches.

:meth:`Producer.send` appends one record and returns its
:class:`RecordMetadata` once it is written (acknowledged). :meth:`Producer.send_batch`
takes a Polars DataFrame or an Arrow table, picks each row's key, value and
timestamp from columns, partitions the rows (Kafka's murmur2 partitioner, see
:mod:`sluice.log.partitioner`), and appends them as a few large batches per
partition: the fast path, with no Python loop per row.

Durability (``fsync=``):

``"always"``
    every append is ``fdatasync``'d before it is acknowledged;
``"interval"`` (default)
    a background thread fsyncs what was appended every ``fsync_interval``
    (1 s); a crash of the process loses nothing, a crash of the machine at most
    that interval;
``"never"``
    the operating system writes back when it wants (Kafka's default).

Everything about a call is checked before anything is written: the topic and
partition exist, no record exceeds ``max_record_bytes``, values match the
topic's schema, compacted topics get keys. A call that fails these checks
writes nothing. All records of one call that go to one partition are written
with one system call and published together, so a reader sees all of them or
none; on a full disk they are removed again and :class:`LogFullError` is raised.

Each producer has a random producer id, and each batch carries it with a
per-partition sequence number (Kafka's idempotent-producer fields).
:meth:`Producer.encode` checks and routes records like ``send_batch`` without
appending them: the exactly-once log sink stages them so, and appends them at
its commit with its own producer id and the checkpoint id as sequence, once
(:mod:`sluice.log.transactions`).
"""

from __future__ import annotations

import itertools
import json
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from sluice.errors import ConfigError
from sluice.log.errors import InvalidRecordError, LogError, RecordTooLargeError
from sluice.log.format import (
    PreparedBatch,
    as_binary,
    codec_id,
    encode_batch,
    prepare_record,
)
from sluice.log.partition import Partition, now_ms
from sluice.log.partitioner import murmur2_one, partition_for
from sluice.log.record_columns import _group, _json_rows, _Records, batch_cuts
from sluice.log.record_columns import record_sizes as record_sizes  # re-exported
from sluice.log.schema import check_frame, check_values
from sluice.time.durations import Duration, parse_duration

Fsync = Literal["always", "interval", "never"]
#: Target size of one on-disk batch written by send_batch.
DEFAULT_BATCH_BYTES = 1 << 20


@dataclass(frozen=True)
class RecordMetadata:
    """Where an acknowledged record went."""

    topic: str
    partition: int
    offset: int
    timestamp: int


@dataclass(frozen=True)
class BatchMetadata:
    """What one ``send_batch`` call wrote: per partition, the offset range
    ``[first, next)`` of its records (in input order within the partition)."""

    topic: str
    ranges: dict[int, tuple[int, int]]

    @property
    def count(self) -> int:
        return sum(b - a for a, b in self.ranges.values())


def to_bytes(value: Any, what: str) -> bytes | None:
    """``bytes``/``str``/JSON-able value as bytes (``None`` stays ``None``)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float | bool | dict | list):
        return json.dumps(value, separators=(",", ":")).encode()
    raise ConfigError(f"{what} must be bytes, str or a JSON value, got {type(value).__name__}")


def _timestamp_ms(ts: Any) -> int:
    if ts is None:
        return now_ms()
    if isinstance(ts, datetime):
        return int(ts.timestamp() * 1000)
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return int(ts)
    raise ConfigError(f"timestamp must be milliseconds or a datetime, got {ts!r}")


class Producer:
    """Appends records to the topics of a :class:`~sluice.log.topic.Log`.

    >>> import tempfile
    >>> import polars as pl
    >>> from sluice.log import Log
    >>> log = Log(tempfile.mkdtemp())
    >>> log.create_topic("clicks", partitions=3)
    >>> df = pl.DataFrame({"user": ["ana", "eve", "ana"], "n": [1, 2, 3]})
    >>> with log.producer(fsync="always") as p:
    ...     meta = p.send_batch("clicks", df, key="user")
    >>> meta.count, sorted(meta.ranges)
    (3, [1, 2])
    """

    def __init__(
        self,
        log: Any,
        *,
        fsync: Fsync = "interval",
        fsync_interval: Duration = "1s",
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        compression: str | None = None,
    ) -> None:
        if fsync not in ("always", "interval", "never"):
            raise ConfigError(f"fsync must be 'always', 'interval' or 'never', got {fsync!r}")
        self.log = log
        self.fsync = fsync
        self.fsync_interval_s = parse_duration(fsync_interval, what="fsync_interval") / 1000
        self.batch_bytes = max(1024, int(batch_bytes))
        self.compression = compression
        self.producer_id = random.getrandbits(62)
        self._sequences: dict[tuple[str, int], int] = {}
        self._sticky: dict[str, int] = {}
        self._dirty: set[Partition] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- single records ------------------------------------------------------------------
    def send(
        self,
        topic: str,
        value: Any,
        key: Any = None,
        *,
        partition: int | None = None,
        timestamp: int | datetime | None = None,
        headers: dict[str, Any] | list[tuple[str, Any]] | None = None,
    ) -> RecordMetadata:
        """Append one record; returns where it went once it is written (and fsync'd
        with ``fsync="always"``). ``value=None`` is a tombstone (deletes the key in a
        compacted topic). ``str`` values and keys are UTF-8 encoded, dicts/lists JSON."""
        k = to_bytes(key, "key")
        v = to_bytes(value, "value")
        ts = _timestamp_ms(timestamp)
        if headers:  # the general path handles headers
            meta = self._send_columns(
                topic,
                _Records.of(pa.array([k], pa.binary()), pa.array([v], pa.binary()), ts, [headers]),
                partition=partition,
            )
            (p, (first, _)) = next(iter(meta.ranges.items()))
            return RecordMetadata(topic, p, first, ts)
        if self._closed:
            raise LogError("the producer is closed")
        cfg = self.log.config(topic)
        size = (len(k) if k is not None else 0) + (len(v) if v is not None else 0)
        if size > cfg.max_record_bytes:
            raise RecordTooLargeError(
                f"the record for topic {topic!r} is {size} bytes, more than the topic's "
                f"max_record_bytes ({cfg.max_record_bytes}); nothing was written"
            )
        if cfg.compact and k is None:
            raise InvalidRecordError(
                f"the record has no key, but topic {topic!r} is compacted; nothing was written"
            )
        if cfg.schema and v is not None:
            check_values(pa.array([v], pa.binary()), cfg.schema, topic)
        if partition is None:
            if k is None:
                partition = self._sticky.get(topic, random.randrange(cfg.partitions))
                self._sticky[topic] = (partition + 1) % cfg.partitions
                partition %= cfg.partitions
            else:
                partition = (murmur2_one(k) & 0x7FFFFFFF) % cfg.partitions
        part = self.log.partition(topic, partition)
        seq = self._sequences.get((topic, partition), 0)
        batch = prepare_record(
            ts,
            k,
            v,
            codec=codec_id(self.compression or cfg.compression),
            producer_id=self.producer_id,
            producer_epoch=0,
            base_sequence=seq,
        )
        first, _ = part.append([batch], fsync=self.fsync == "always")
        self._sequences[(topic, partition)] = (seq + 1) % (2**31)
        self._mark_dirty(part)
        return RecordMetadata(topic, partition, first, ts)

    def send_many(self, topic: str, records: Iterable[dict[str, Any]]) -> BatchMetadata:
        """Append records given as dicts with ``value`` and optional ``key``,
        ``timestamp``, ``partition`` (the same for all) and ``headers``."""
        rows = list(records)
        if not rows:
            return BatchMetadata(topic, {})
        parts = {r.get("partition") for r in rows}
        if len(parts) > 1:
            raise ConfigError("send_many: give the same 'partition' to all records, or none")
        recs = _Records.of(
            pa.array([to_bytes(r.get("key"), "key") for r in rows], pa.binary()),
            pa.array([to_bytes(r.get("value"), "value") for r in rows], pa.binary()),
            np.array([_timestamp_ms(r.get("timestamp")) for r in rows], np.int64),
            [r.get("headers") for r in rows] if any(r.get("headers") for r in rows) else None,
        )
        return self._send_columns(topic, recs, partition=parts.pop())

    # -- columnar batches ----------------------------------------------------------------
    def send_batch(
        self,
        topic: str,
        data: pl.DataFrame | pa.Table | pa.RecordBatch,
        *,
        key: str | None = None,
        value: str | None = None,
        timestamp: str | None = None,
        partition: int | None = None,
    ) -> BatchMetadata:
        """Append every row of ``data``.

        ``key``: column whose values (as UTF-8 text or bytes) are the record keys;
        none: keyless records. ``value``: column holding the value (bytes or text);
        none: each row is serialized as a JSON object (all columns). ``timestamp``:
        column of epoch milliseconds or datetimes; none: now. ``partition``: write
        all rows to this partition instead of partitioning by key.
        """
        recs = self._columns(topic, data, key=key, value=value, timestamp=timestamp)
        if recs is None:
            return BatchMetadata(topic, {})
        return self._send_columns(topic, recs, partition=partition)

    def encode(
        self,
        topic: str,
        data: pl.DataFrame | pa.Table | pa.RecordBatch,
        *,
        key: str | None = None,
        value: str | None = None,
        timestamp: str | None = None,
        partition: int | None = None,
    ) -> pa.Table | None:
        """The records :meth:`send_batch` would append, without appending them: a
        table of ``partition`` (int32), ``timestamp`` (int64, ms), ``key`` and
        ``value`` (large_binary), in input order, checked as ``send_batch``
        checks them (so it raises the same errors), or ``None`` for no rows.
        :func:`sluice.log.transactions.commit_staged` appends such records
        later, once (the exactly-once log sink stages records this way).

        >>> import tempfile
        >>> import polars as pl
        >>> from sluice.log import Log
        >>> log = Log(tempfile.mkdtemp())
        >>> log.create_topic("t", partitions=2)
        >>> with log.producer() as p:
        ...     t = p.encode("t", pl.DataFrame({"k": ["a", "b"], "n": [1, 2]}), key="k")
        >>> t.column_names, t.column("value").to_pylist(), log.offsets("t", 0)
        (['partition', 'timestamp', 'key', 'value'], [b'{"k":"a","n":1}', b'{"k":"b","n":2}'], (0, 0))
        """
        recs = self._columns(topic, data, key=key, value=value, timestamp=timestamp)
        if recs is None:
            return None
        _, pids = self._route(topic, recs, partition=partition)
        n = recs.n
        keys = recs.keys if recs.keys is not None else pa.nulls(n, pa.binary())
        return pa.table(
            {
                "partition": pa.array(
                    np.full(n, pids, np.int32) if isinstance(pids, int) else pids.astype(np.int32)
                ),
                "timestamp": pa.array(
                    np.full(n, recs.ts, np.int64) if isinstance(recs.ts, int) else recs.ts
                ),
                "key": pc.cast(keys, pa.large_binary()),
                "value": pc.cast(recs.values, pa.large_binary()),
            }
        )

    def _columns(
        self,
        topic: str,
        data: pl.DataFrame | pa.Table | pa.RecordBatch,
        *,
        key: str | None,
        value: str | None,
        timestamp: str | None,
    ) -> _Records | None:
        """Keys, values and timestamps of ``data`` as columns (``None``: no rows)."""
        if isinstance(data, pl.DataFrame):
            columns, height = data.columns, data.height
        else:
            columns, height = data.schema.names, data.num_rows
        if height == 0:
            return None
        for col in (key, value, timestamp):
            if col is not None and col not in columns:
                raise ConfigError(
                    f"send_batch: column {col!r} not in the data (columns: {columns})"
                )

        def column(name: str) -> Any:  # Arrow input stays Arrow: no copy
            if isinstance(data, pl.DataFrame):
                return data.get_column(name).to_arrow()
            return data.column(name)

        cfg = self.log.config(topic)
        if value is None:
            if isinstance(data, pa.RecordBatch):
                data = pa.Table.from_batches([data])
            df = data if isinstance(data, pl.DataFrame) else pl.from_arrow(data)
            assert isinstance(df, pl.DataFrame)
            if cfg.schema:
                check_frame(df, cfg.schema, topic)
            values = _json_rows(df)
        else:
            values = as_binary(column(value))
        keys = as_binary(column(key)) if key is not None else None
        ts: np.ndarray | int
        if timestamp is None:
            ts = now_ms()
        else:
            tcol = pl.Series(column(timestamp))
            if isinstance(tcol.dtype, pl.Datetime):
                tcol = tcol.dt.epoch("ms")
            elif tcol.dtype == pl.String:
                tcol = tcol.str.to_datetime(time_unit="ms").dt.epoch("ms")
            if tcol.null_count():
                raise ConfigError(f"send_batch: timestamp column {timestamp!r} has nulls")
            ts = tcol.cast(pl.Int64).to_numpy()
        return _Records.of(keys, values, ts, schema_checked=value is None)

    def _send_columns(self, topic: str, recs: _Records, *, partition: int | None) -> BatchMetadata:
        cfg, pids = self._route(topic, recs, partition=partition)
        codec = codec_id(self.compression or cfg.compression)
        plans: list[tuple[Partition, list[PreparedBatch]]] = []
        if isinstance(pids, int):
            part = self.log.partition(topic, pids)
            plans.append((part, self._prepare(topic, pids, recs, codec)))
        else:
            for p, idx in _group(pids).items():
                sub = recs if idx is None else recs.take(idx)
                plans.append((self.log.partition(topic, p), self._prepare(topic, p, sub, codec)))
        # -- write -----------------------------------------------------------------------
        ranges: dict[int, tuple[int, int]] = {}
        always = self.fsync == "always"
        for part, batches in plans:
            ranges[part.index] = part.append(batches, fsync=always)
            if self.fsync == "interval":
                self._mark_dirty(part)
        return BatchMetadata(topic, ranges)

    def _route(
        self, topic: str, recs: _Records, *, partition: int | None
    ) -> tuple[Any, np.ndarray | int]:
        """Check records before anything is written; return the topic's config and
        the records' partition (one for all, or one per record)."""
        if self._closed:
            raise LogError("the producer is closed")
        cfg = self.log.config(topic)
        if partition is not None:
            self.log.partition(topic, partition)  # raises PartitionNotFoundError
        # no record can be larger than all of them together: O(1) for the usual case
        if recs.nbytes + recs.header_bytes > cfg.max_record_bytes:
            sizes = recs.sizes()
            too_big = np.flatnonzero(sizes > cfg.max_record_bytes)
            if len(too_big):
                i = int(too_big[0])
                raise RecordTooLargeError(
                    f"record {i} for topic {topic!r} is {int(sizes[i])} bytes, more than the "
                    f"topic's max_record_bytes ({cfg.max_record_bytes}); nothing was written. "
                    f"Raise it with `sluice topic alter {topic} --max-record-bytes ...`"
                )
        if cfg.compact and (recs.klen is None or recs.keys is None or recs.keys.null_count):
            i = 0 if recs.klen is None else int(np.flatnonzero(recs.klen < 0)[0])
            raise InvalidRecordError(
                f"record {i} has no key, but topic {topic!r} is compacted (records are kept "
                "per key); nothing was written"
            )
        if cfg.schema and not recs.schema_checked:
            check_values(recs.values, cfg.schema, topic)
        if partition is not None:
            return cfg, partition
        if recs.keys is None or recs.klen is None:  # all keyless: sticky partition
            sticky = self._sticky.get(topic, random.randrange(cfg.partitions))
            self._sticky[topic] = (sticky + 1) % cfg.partitions
            return cfg, sticky % cfg.partitions
        pids = partition_for(recs.keys, cfg.partitions)
        if recs.keys.null_count:
            sticky = self._sticky.get(topic, random.randrange(cfg.partitions))
            self._sticky[topic] = (sticky + 1) % cfg.partitions
            pids[recs.klen < 0] = sticky % cfg.partitions
        return cfg, pids

    def _mark_dirty(self, part: Partition) -> None:
        if self.fsync == "interval":
            with self._lock:
                self._dirty.add(part)
            if self._flusher is None:
                self._start_flusher()

    def _prepare(self, topic: str, p: int, recs: _Records, codec: int) -> list[PreparedBatch]:
        seq_key = (topic, p)
        seq = self._sequences.get(seq_key, 0)
        if recs.nbytes + 8 * recs.n + recs.header_bytes <= self.batch_bytes:
            pieces = [recs]  # the usual case: one call, one batch, no cut to compute
        else:
            cuts = batch_cuts(recs.sizes(), self.batch_bytes)
            pieces = [recs.slice(a, b) for a, b in itertools.pairwise(cuts)]
        out = []
        for r in pieces:
            out.append(
                encode_batch(
                    r.ts,
                    r.klen,
                    r.kdata,
                    r.vlen,
                    r.vdata,
                    headers=r.headers,
                    codec=codec,
                    producer_id=self.producer_id,
                    producer_epoch=0,
                    base_sequence=seq,
                )
            )
            seq = (seq + r.n) % (2**31)
        self._sequences[seq_key] = seq
        return out

    # -- durability ------------------------------------------------------------------------
    def _start_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name="sluice-log-fsync", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval_s):
            self._flush_dirty()

    def _flush_dirty(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for part in dirty:
            try:
                part.flush()
            except OSError:
                with self._lock:
                    self._dirty.add(part)

    def flush(self) -> None:
        """fsync everything this producer appended so far (any policy)."""
        with self._lock:
            self._dirty.clear()
        for part in {p for (t, i) in self._sequences for p in [self.log.partition(t, i)]}:
            part.flush()

    def close(self) -> None:
        """Stop the fsync thread; with ``fsync="interval"`` fsync what is pending."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        if self.fsync == "interval":
            self._flush_dirty()


__all__ = ["BatchMetadata", "Producer", "RecordMetadata", "to_bytes"]
