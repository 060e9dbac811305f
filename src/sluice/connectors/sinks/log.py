"""Write a stream to a topic of the embedded log (:mod:`sluice.log`).

Each sink subtask has its own producer; rows are partitioned by key with
Kafka's partitioner (or all go to one ``partition``), a batch at a time. Rows
are serialized as JSON objects unless ``value`` names a column holding the
value. Delivery is at-least-once: a batch is acknowledged when it is written
(and fsync'd with ``fsync="always"``; ``flush`` and ``close`` fsync in any
case). Every batch carries the producer's id and per-partition sequence
numbers, which a later exactly-once mode uses to drop replayed duplicates
without a change of the log format.
"""

from __future__ import annotations

import os
from typing import Any

import polars as pl

from sluice.connectors.base import Sink, SinkWriter
from sluice.log.producer import Fsync, Producer
from sluice.log.topic import Log


class LogSinkWriter(SinkWriter):
    def __init__(self, sink: LogSink) -> None:
        self.sink = sink
        self.producer: Producer | None = None

    def open(self) -> None:
        self.producer = self.sink.log.producer(fsync=self.sink.fsync)

    def write(self, batch: pl.DataFrame) -> None:
        if self.producer is None:
            self.open()
        assert self.producer is not None
        s = self.sink
        self.producer.send_batch(
            s.topic, batch, key=s.key, value=s.value, timestamp=s.timestamp, partition=s.partition
        )

    def flush(self) -> None:
        if self.producer is not None:
            self.producer.flush()

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush()
            self.producer.close()
            self.producer = None


class LogSink(Sink):
    """A topic of the embedded log (see :func:`log`)."""

    def __init__(
        self,
        topic: str,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        key: str | None = None,
        value: str | None = None,
        timestamp: str | None = None,
        partition: int | None = None,
        fsync: Fsync = "interval",
        create: dict[str, Any] | bool = False,
    ) -> None:
        self.log = Log(data_dir)
        if create and not self.log.exists(topic):
            self.log.create_topic(
                topic, exist_ok=True, **(create if isinstance(create, dict) else {})
            )
        self.log.config(topic)  # raises TopicNotFoundError
        if partition is not None:
            self.log.partition(topic, partition)  # raises PartitionNotFoundError
        self.topic = topic
        self.name = f"log:{topic}"
        self.key, self.value, self.timestamp = key, value, timestamp
        self.partition = partition
        self.fsync = fsync

    def create_writer(self, subtask: int, parallelism: int) -> SinkWriter:
        return LogSinkWriter(self)


def log(
    topic: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    key: str | None = None,
    value: str | None = None,
    timestamp: str | None = None,
    partition: int | None = None,
    fsync: Fsync = "interval",
    create: dict[str, Any] | bool = False,
) -> LogSink:
    """Append a stream to a topic of the embedded log (at-least-once).

    Parameters
    ----------
    topic
        The topic to write.
    data_dir
        The log's data directory (default: ``$SLUICE_HOME``, else ``~/.sluice``).
    key
        Column whose values are the record keys (partitioning, compaction).
    value
        Column holding the value (bytes or text); by default each row is
        written as a JSON object of all its columns.
    timestamp
        Column of record timestamps (epoch ms or datetime); default: now.
    partition
        Write every row to this partition instead of partitioning by key.
    fsync
        ``"always"``, ``"interval"`` (default) or ``"never"``.
    create
        Create the topic if it is missing (``True``, or a dict of
        ``Log.create_topic`` settings such as ``{"partitions": 4}``).

    >>> import tempfile
    >>> import sluice as sl
    >>> from sluice.log import Log
    >>> d = tempfile.mkdtemp()
    >>> flow = sl.Flow("write")
    >>> flow.source([{"user": "a", "n": 1}, {"user": "b", "n": 2}]).sink(
    ...     log("counts", d, key="user", create={"partitions": 2}))
    >>> _ = flow.run()
    >>> sum(end for _, end in (Log(d).offsets("counts", p) for p in range(2)))
    2
    """
    return LogSink(
        topic, data_dir, key=key, value=value, timestamp=timestamp, partition=partition,
        fsync=fsync, create=create,
    )  # fmt: skip


__all__ = ["LogSink", "LogSinkWriter", "log"]
