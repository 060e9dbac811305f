"""Hive-style partitioned output for the file sinks (``partition_by=[...]``).

Rows go to ``<dir>/<col>=<value>/.../part-<subtask>-<seq>.<ext>`` (the
partition columns are not repeated inside the files, as Hive, Spark and Flink's
filesystem sink do). Each partition directory is written by an ordinary part-file
writer, so rolling, hidden in-progress names and two-phase commit are the same;
a transaction lists the pending files of every partition.
"""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import polars as pl

from sluice.connectors.base import SinkWriter
from sluice.connectors.sinks._commit import discard

if TYPE_CHECKING:
    from sluice.connectors.sinks.files import FileSink, FileSinkWriter

#: Hive's name for the partition of null values.
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


def partition_dir(columns: list[str], values: tuple[Any, ...]) -> str:
    """The relative directory of one partition: ``a=1/b=x`` (values escaped)."""
    parts = []
    for c, v in zip(columns, values, strict=True):
        s = NULL_PARTITION if v is None else quote(str(v), safe=" :,;+@()!$'-_.~")
        if s in ("", ".", ".."):
            s = quote(s, safe="") or "%00"
        parts.append(f"{c}={s}")
    return os.path.join(*parts)


def child_sink(sink: FileSink, rel: str) -> FileSink:
    """The part-file sink writing partition ``rel`` of ``sink``."""
    child = copy.copy(sink)
    child.path = os.path.join(sink.path, rel)
    child.directory = child.path
    child.partition_by = None
    child.single_file = False
    return child


class PartitionedWriter(SinkWriter):
    """One subtask's writer of a partitioned file sink: a part-file writer per
    partition, created on the partition's first row."""

    def __init__(self, sink: FileSink, subtask: int) -> None:
        assert sink.partition_by
        self.sink = sink
        self.subtask = subtask
        self.columns = list(sink.partition_by)
        self.writers: dict[str, FileSinkWriter] = {}

    def _writer(self, rel: str) -> FileSinkWriter:
        w = self.writers.get(rel)
        if w is None:
            from sluice.connectors.sinks.files import FileSinkWriter

            w = FileSinkWriter(child_sink(self.sink, rel), self.subtask)
            w.transactional = self.transactional
            w.open()
            self.writers[rel] = w
        return w

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        missing = [c for c in self.columns if c not in batch.columns]
        if missing:
            raise ValueError(
                f"{self.sink.format} sink {self.sink.path!r}: partition column(s) {missing} "
                f"are not in the stream (columns: {batch.columns})"
            )
        parts = batch.partition_by(self.columns, as_dict=True, maintain_order=True)
        for values, part in parts.items():
            self._writer(partition_dir(self.columns, values)).write(part.drop(self.columns))

    def flush(self) -> None:
        for w in self.writers.values():
            w.flush()

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        if not self.transactional:
            return super().pre_commit(checkpoint_id)
        parts = []
        for rel, w in self.writers.items():
            txn = w.pre_commit(checkpoint_id)
            if txn.get("files"):
                parts.append([rel, txn])
        return {"partitions": parts}

    def commit(self, checkpoint_id: int, txn: dict[str, Any]) -> None:
        if not self.transactional:
            return
        for rel, t in txn.get("partitions", []):
            w = self.writers.get(rel)
            if w is not None:
                w.commit(checkpoint_id, t)
            else:
                child_sink(self.sink, rel).publish(t)

    def close(self) -> None:
        errors: list[BaseException] = []
        for w in self.writers.values():
            try:
                w.close()
            except BaseException as e:  # close every file, then report
                errors.append(e)
        if errors:
            raise errors[0]

    @property
    def completed(self) -> list[str]:
        return [p for w in self.writers.values() for p in w.completed]


def recover_partitioned(sink: FileSink, committed: list[dict[str, Any]]) -> None:
    """Publish the partitions of the restored checkpoint's transactions, then
    delete every other hidden file under the sink's directory."""
    if not os.path.isdir(sink.directory):
        return
    for txn in committed:
        for rel, t in txn.get("partitions", []):
            child_sink(sink, rel).publish(t)
    for dirpath, _dirs, _files in os.walk(sink.directory):
        discard(dirpath, sink.hidden)
