"""Write a stream to a topic of the embedded log (:mod:`sluice.log`).

Rows are partitioned by key with Kafka's partitioner (or all go to one
``partition``) and serialized as JSON objects unless ``value`` names a column
holding the value.

Without checkpoints, each sink subtask appends every batch as it comes
(at-least-once): a batch is acknowledged when it is written (and fsync'd with
``fsync="always"``; ``flush`` and ``close`` fsync in any case).

In a checkpointing job the sink is **exactly-once** (two-phase commit over
:mod:`sluice.log.transactions`):

- *Between checkpoints* a writer checks and routes its rows as an append would
  (so bad rows fail the job at once), but only stages them: in memory, spilled
  past ``staging_buffer`` to a staging file
  ``<data dir>/staging/<topic>/<txn id>/<producer id>.inprogress`` (Arrow IPC:
  partition, timestamp, key, value). Nothing reaches the topic.
- *Pre-commit* (the checkpoint barrier): the staging file is finished, fsync'd
  and renamed ``<producer id>-<checkpoint id>.arrow``; the transaction stored
  in the checkpoint names it, with the writer's producer id, the sequence
  number (the checkpoint id) and, per partition, the record count and the
  partition's current end offset.
- *Commit* (the checkpoint is complete): each partition's records are appended
  in batches carrying the producer id and the sequence, fsync'd, after
  counting under the partition's writer lock how many records of that
  producer and sequence the partition already has past the recorded end
  offset (records retention removed since are counted from the partition's
  producer-state snapshot, :mod:`sluice.log.producer_state`); only the
  missing ones are appended. Then the staging file is deleted. A repeated or
  interrupted commit therefore ends with every record in the topic once, or
  fails the job when the partition cannot tell (restored after the topic's
  ``producer_expiration``).
- *Recovery* (:meth:`LogSink.recover`, restoring a checkpoint): the
  checkpoint's transactions are committed (idempotently), and every other
  staged file of the sink is deleted: its rows are replayed.

Producer ids are derived from a random transactional id of the sink (made
when a job starts without a checkpoint, then carried in its checkpoints) and
the subtask: stable across restarts of a job, distinct across sinks and jobs.
Staging directories of other jobs that are not in use and have not changed
for ``transaction_timeout`` are deleted (an abandoned job's leftovers).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import time
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from sluice.connectors.base import Sink, SinkWriter
from sluice.connectors.sinks.files import parse_size
from sluice.errors import JobError
from sluice.log.config import fsync_dir
from sluice.log.producer import Fsync, Producer
from sluice.log.producer_state import ProducerStateUnknownError
from sluice.log.topic import Log
from sluice.log.transactions import (
    StagedDataLostError,
    StagedFile,
    StagingFile,
    commit_staged,
)
from sluice.runtime import faults
from sluice.time.durations import Duration, parse_duration

_LOCK = ".lock"


#: Staging directories this process holds: lock file path -> [fd, users]. Sinks
#: of one process share a lock (a run that failed without closing its writers
#: must not block the next run); other processes are kept out by ``flock``.
_HELD: dict[str, list[int]] = {}


def _acquire(path: str, what: str) -> None:
    held = _HELD.get(path)
    if held is not None:
        held[1] += 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JobError(
            f"log sink {what!r}: its transactions ({os.path.dirname(path)}) are in use by "
            "another running instance of this job; stop it first (a job runs once per "
            "checkpoint directory)"
        ) from None
    _HELD[path] = [fd, 1]


def _release(path: str) -> None:
    held = _HELD.get(path)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[path]
        os.close(held[0])  # releases the lock


def _fault_point(partition: int) -> None:
    # SLUICE_FAULT=log_commit:<n> kills the process before the n-th partition
    # append of a commit (crash tests)
    faults.point("log_commit")


class LogSinkWriter(SinkWriter):
    """One subtask's writer: appends at once, or stages until commit (transactional)."""

    def __init__(self, sink: LogSink, subtask: int = 0) -> None:
        self.sink = sink
        self.subtask = subtask
        self.producer: Producer | None = None
        # transactional state
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._counts: np.ndarray = np.zeros(0, np.int64)
        self._staging: StagingFile | None = None
        self._pending: list[StagedFile] = []
        self._attached = False

    @property
    def producer_id(self) -> int:
        return self.sink.producer_id(self.subtask)

    def open(self) -> None:
        self.producer = self.sink.log.producer(fsync=self.sink.fsync)
        if self.transactional and not self._attached:
            self.sink._attach()
            self._attached = True

    def write(self, batch: pl.DataFrame) -> None:
        if self.producer is None:
            self.open()
        assert self.producer is not None
        s = self.sink
        if not self.transactional:
            self.producer.send_batch(
                s.topic, batch, key=s.key, value=s.value, timestamp=s.timestamp,
                partition=s.partition,
            )  # fmt: skip
            return
        staged = self.producer.encode(
            s.topic, batch, key=s.key, value=s.value, timestamp=s.timestamp, partition=s.partition
        )
        if staged is None:
            return
        counts = np.bincount(staged.column("partition").to_numpy(), minlength=len(self._counts))
        counts[: len(self._counts)] += self._counts
        self._counts = counts
        self._buffer.append(staged)
        self._buffered += staged.nbytes
        if self._buffered >= s.staging_buffer:
            self._spill()

    def _spill(self) -> None:
        """Write the buffered rows to the staging file (not fsync'd yet)."""
        if self._staging is None:
            directory = self.sink.staging_dir()
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, f"{self.producer_id:016x}.inprogress")
            self._staging = StagingFile(path)
        for t in self._buffer:
            self._staging.write(t)
        self._buffer = []
        self._buffered = 0

    def flush(self) -> None:
        if self.producer is not None and not self.transactional:
            self.producer.flush()

    # -- two-phase commit ---------------------------------------------------------------
    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        """Finish the staging file of the rows written since the last checkpoint
        and return the transaction: the sink's transactional id, this writer's
        producer id and every staged file not committed yet."""
        if not self.transactional:
            return super().pre_commit(checkpoint_id)
        if self._buffer or self._staging is not None:
            self._spill()
            assert self._staging is not None
            name = f"{self.producer_id:016x}-{checkpoint_id:010d}.arrow"
            self._staging.finish(os.path.join(self.sink.staging_dir(), name))
            self._staging = None
            parts = {
                p: (self.sink.log.partition(self.sink.topic, p).high_watermark(), int(c))
                for p, c in enumerate(self._counts.tolist())
                if c
            }
            self._counts = np.zeros(0, np.int64)
            self._pending.append(StagedFile(name, self.producer_id, checkpoint_id, parts))
        return {
            "txn_id": self.sink.txn_id,
            "topic": self.sink.topic,
            "subtask": self.subtask,
            "producer_id": self.producer_id,
            "staged": [f.to_json() for f in self._pending],
        }

    def commit(self, checkpoint_id: int, txn: dict[str, Any]) -> None:
        """Append the staged files of ``txn`` to the topic (idempotent)."""
        if not self.transactional:
            return
        self.sink.commit_txn(txn)
        done = {e["file"] for e in txn.get("staged", [])}
        self._pending = [f for f in self._pending if f.name not in done]

    def close(self) -> None:
        """Release the producer. A transactional writer publishes nothing here:
        rows not pre-committed are dropped (they are replayed), pre-committed
        files stay for the commit or the recovery."""
        if self._staging is not None:
            self._staging.abandon()
            self._staging = None
        self._buffer = []
        self._buffered = 0
        if self.producer is not None:
            if not self.transactional:
                self.producer.flush()
            self.producer.close()
            self.producer = None
        if self._attached:
            self._attached = False
            self.sink._detach()


class LogSink(Sink):
    """A topic of the embedded log (see :func:`log`); exactly-once when the job
    checkpoints (see the module docstring)."""

    exactly_once = True

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
        staging_buffer: int | str = "16MB",
        transaction_timeout: Duration = "7d",
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
        self.staging_buffer = parse_size(staging_buffer, what="staging_buffer")
        self.transaction_timeout_ms = parse_duration(
            transaction_timeout, what="transaction_timeout"
        )
        #: Identifies this sink's transactions: random for a new job, restored by
        #: :meth:`recover` from the checkpoint of a resumed one.
        self.txn_id = secrets.token_hex(8)
        self._lock_path: str | None = None
        self._attached = 0
        self._collected = False

    # -- identity and files ---------------------------------------------------------------
    def producer_id(self, subtask: int, txn_id: str | None = None) -> int:
        """The producer id of ``subtask``: 62 bits of a hash of the transactional id
        and the subtask."""
        digest = hashlib.blake2b(f"{txn_id or self.txn_id}/{subtask}".encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "big") >> 2

    def staging_root(self) -> str:
        """``<data dir>/staging/<topic>``: the staging directories of all sinks of the topic."""
        return os.path.join(self.log.data_dir, "staging", self.topic)

    def staging_dir(self, txn_id: str | None = None) -> str:
        return os.path.join(self.staging_root(), txn_id or self.txn_id)

    def create_writer(self, subtask: int, parallelism: int) -> SinkWriter:
        return LogSinkWriter(self, subtask)

    # -- transactions ---------------------------------------------------------------------
    def commit_txn(self, txn: dict[str, Any]) -> None:
        """Append the staged files of a pre-committed transaction (idempotent)."""
        topic = str(txn.get("topic", self.topic))
        directory = os.path.join(self.log.data_dir, "staging", topic, str(txn["txn_id"]))
        entries = [StagedFile.from_json(e) for e in txn.get("staged", [])]
        for staged in sorted(entries, key=lambda f: f.sequence):
            try:
                commit_staged(
                    self.log,
                    topic,
                    os.path.join(directory, staged.name),
                    staged,
                    before_append=_fault_point,
                )
            except StagedDataLostError as e:
                raise JobError(
                    f"log sink {self.name!r}: {e}. Were files deleted from {directory}, or was "
                    "the job restored after its transaction_timeout? Its output of that "
                    "checkpoint cannot be completed; delete the checkpoint to start over"
                ) from e
            except ProducerStateUnknownError as e:
                raise JobError(
                    f"log sink {self.name!r}: {e}. Appending the records of checkpoint "
                    f"{staged.sequence} again could duplicate them, so the commit stops here; "
                    "delete the checkpoint to start over (the topic may then hold that output "
                    "twice), or restore the job within the topic's producer_expiration"
                ) from e

    def recover(self, committed: list[dict[str, Any]]) -> None:
        """Commit the transactions of the restored checkpoint, then delete every
        other staged file of the sink (rows written after the checkpoint)."""
        ids = sorted({str(t["txn_id"]) for t in committed if t.get("txn_id")})
        if ids:
            self.txn_id = ids[0]
            self._lock()
        for txn in committed:
            if txn.get("txn_id"):
                self.commit_txn(txn)
        for txn_id in ids:
            directory = self.staging_dir(txn_id)
            if not os.path.isdir(directory):
                continue
            gone = [n for n in os.listdir(directory) if n != _LOCK]
            for name in gone:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(directory, name))
            if gone:
                fsync_dir(directory)

    # -- the staging directory's lock and garbage collection ------------------------------
    def _attach(self) -> None:
        """A transactional writer opens: hold this sink's staging directory, and
        collect abandoned ones."""
        self._attached += 1
        self._lock()
        if not self._collected:
            self._collected = True
            self._collect_abandoned()

    def _lock(self) -> None:
        """Lock this sink's staging directory (``flock`` on its ``.lock``) while this
        process uses it, so that no other job collects it and no second instance
        of the job, in another process, commits the same transactions."""
        if self._lock_path is not None:
            return
        directory = self.staging_dir()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, _LOCK)
        _acquire(path, self.name)
        self._lock_path = path

    def _detach(self) -> None:
        self._attached -= 1
        if self._attached <= 0 and self._lock_path is not None:
            _release(self._lock_path)
            self._lock_path = None
            self._attached = 0

    def _collect_abandoned(self) -> None:
        """Delete the staging directories of the topic that no running sink holds
        and in which nothing changed for ``transaction_timeout``."""
        root = self.staging_root()
        horizon = time.time() - self.transaction_timeout_ms / 1000
        for name in os.listdir(root):
            directory = os.path.join(root, name)
            if name == self.txn_id or not os.path.isdir(directory):
                continue
            try:
                fd = os.open(os.path.join(directory, _LOCK), os.O_RDWR)
            except FileNotFoundError:
                fd = None  # never attached: nothing runs there
            except OSError:
                continue
            try:
                if fd is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a running sink's
                try:
                    entries = [os.path.join(directory, n) for n in os.listdir(directory)]
                    newest = max(os.path.getmtime(p) for p in [directory, *entries])
                except FileNotFoundError:
                    continue
                if newest < horizon:
                    shutil.rmtree(directory, ignore_errors=True)
            finally:
                if fd is not None:
                    os.close(fd)

    def __repr__(self) -> str:
        return f"LogSink({self.topic!r}, {self.log.data_dir!r})"


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
    staging_buffer: int | str = "16MB",
    transaction_timeout: Duration = "7d",
) -> LogSink:
    """Append a stream to a topic of the embedded log: exactly-once in a
    checkpointing job, at-least-once otherwise.

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
        Without checkpoints: ``"always"``, ``"interval"`` (default) or
        ``"never"``. With checkpoints every commit is fsync'd.
    create
        Create the topic if it is missing (``True``, or a dict of
        ``Log.create_topic`` settings such as ``{"partitions": 4}``).
    staging_buffer
        With checkpoints: rows staged between two checkpoints are kept in
        memory up to this size (default ``"16MB"``), then spilled to a
        staging file in ``<data dir>/staging/<topic>/``.
    transaction_timeout
        With checkpoints: staged output of another job that has not run for
        this long (default 7 days) is deleted when this sink starts; that job,
        restored later, fails instead of completing its last commit.

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
        fsync=fsync, create=create, staging_buffer=staging_buffer,
        transaction_timeout=transaction_timeout,
    )  # fmt: skip


__all__ = ["LogSink", "LogSinkWriter", "log"]
