"""Exactly-once appends: records staged in a file, then appended to the log once.

This is what the exactly-once log sink (:mod:`sluice.connectors.sinks.log`) is
built on; it follows Kafka's idempotent producer, with the checkpoint as the
transaction:

1. **Stage.** Records are checked and routed to partitions as
   :meth:`~sluice.log.producer.Producer.send_batch` would (with
   :meth:`~sluice.log.producer.Producer.encode`), but not appended: they are
   written to a staging file (:class:`StagingFile`), an Arrow IPC file of
   ``partition``, ``timestamp``, ``key``, ``value`` in input order, which is
   finished (footer, ``fsync``) and renamed into place when the transaction
   is prepared. A consumer sees nothing of it.
2. **Prepare.** :class:`StagedFile` describes a finished staging file: its
   name, the producer id and sequence number its records will carry, and per
   partition the number of records and the partition's high watermark at that
   moment (``since``). It is small and JSON-serializable; the sink stores it
   in the checkpoint.
3. **Commit.** :func:`commit_staged` appends each partition's records as
   ordinary batches whose headers carry the producer id and the sequence (the
   checkpoint id), with ``fsync``, through
   :meth:`~sluice.log.partition.Partition.append_once`: under the partition's
   writer lock it first counts the records of that producer and sequence
   already in the partition at offsets ``>= since`` (from the partition's
   producer-state snapshot below the offset it covers, from the batch headers
   after it: a few bytes per batch appended since), and appends
   only the records still missing. Repeating a commit therefore changes
   nothing, and a commit cut short anywhere (between two partitions, or in
   the middle of one at a segment roll) is completed by the next attempt.
   The staging file is deleted once every partition holds its records.

Only ``since`` is scanned, so a batch of the same producer and sequence
written before the prepare (by an earlier run that reused a checkpoint id)
can never be mistaken for this one. Records removed between the commit and
its repetition (segments deleted by retention or moved to the archive,
batches emptied by compaction) are still counted: the producer-state snapshot
(:mod:`sluice.log.producer_state`) covers them before they are removed. When
it cannot tell (the producer id expired, or the snapshot was lost with the
records), the commit raises
:class:`~sluice.log.producer_state.ProducerStateUnknownError` instead of
appending them again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from sluice.log.config import fsync_dir
from sluice.log.errors import LogError
from sluice.log.format import PreparedBatch, binary_parts, codec_id, prepare_batch

#: Columns of a staging file (what :meth:`Producer.encode` returns).
STAGED_SCHEMA = pa.schema(
    [
        ("partition", pa.int32()),
        ("timestamp", pa.int64()),
        ("key", pa.large_binary()),
        ("value", pa.large_binary()),
    ]
)
#: Target size of one batch appended by a commit.
COMMIT_BATCH_BYTES = 1 << 20


class StagedDataLostError(LogError):
    """A staging file needed to complete a commit is missing or does not match."""


@dataclass
class StagedFile:
    """A finished staging file and what committing it appends.

    ``partitions`` maps a partition to ``(since, count)``: its high watermark
    when the file was prepared, and how many of the file's records go to it.
    """

    name: str
    producer_id: int
    sequence: int
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(c for _, c in self.partitions.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "producer_id": self.producer_id,
            "sequence": self.sequence,
            "partitions": {str(p): [s, c] for p, (s, c) in sorted(self.partitions.items())},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StagedFile:
        return cls(
            name=str(d["file"]),
            producer_id=int(d["producer_id"]),
            sequence=int(d["sequence"]),
            partitions={int(p): (int(s), int(c)) for p, (s, c) in d["partitions"].items()},
        )


class StagingFile:
    """An Arrow IPC file being written with staged records (a table per call)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows = 0
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by finish/abandon
        self._writer = pa.ipc.new_file(self._fh, STAGED_SCHEMA)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table.cast(STAGED_SCHEMA))
        self.rows += table.num_rows

    def finish(self, final: str) -> None:
        """Write the footer, fsync, and rename the file to ``final`` (durably)."""
        self._writer.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.path, final)
        fsync_dir(os.path.dirname(final))

    def abandon(self) -> None:
        """Close and delete the unfinished file."""
        with contextlib.suppress(Exception):
            self._writer.close()
        self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


def read_staged(path: str) -> pa.Table:
    """The records of a finished staging file (memory-mapped, not copied)."""
    # the buffers keep the mapping alive after the file is closed or deleted
    return pa.ipc.open_file(pa.memory_map(path)).read_all()


def commit_staged(
    log: Any,
    topic: str,
    path: str,
    staged: StagedFile,
    *,
    compression: str | None = None,
    batch_bytes: int | None = None,
    before_append: Callable[[int], None] | None = None,
) -> dict[int, tuple[int, int]]:
    """Append the records of staging file ``path`` to ``topic`` (once: see the
    module docstring), fsync'd, then delete the file. Returns, per partition,
    ``(records found already appended, records appended now)``.
    ``before_append(partition)`` is called before each partition's append
    (crash tests kill the process there).

    Raises :class:`StagedDataLostError` if records are missing from the log
    and the file that holds them is gone (or does not match ``staged``).
    """
    cfg = log.config(topic)
    codec = codec_id(compression or cfg.compression)
    batch_bytes = batch_bytes or COMMIT_BATCH_BYTES
    table: pa.Table | None = None
    groups: dict[int, np.ndarray] = {}

    def rows_of(p: int) -> pa.Table:
        nonlocal table
        if table is None:
            try:
                table = read_staged(path)
            except (FileNotFoundError, pa.ArrowInvalid) as e:
                raise StagedDataLostError(
                    f"cannot complete the commit of sequence {staged.sequence} of producer "
                    f"{staged.producer_id:#x} to topic {topic!r}: the staging file {path} is "
                    f"{'missing' if isinstance(e, FileNotFoundError) else 'unreadable'} and "
                    f"partition {p} lacks records of it"
                ) from e
            pids = table.column("partition").to_numpy()
            order = np.argsort(pids, kind="stable")
            bounds = np.flatnonzero(np.diff(pids[order])) + 1
            for chunk in np.split(order, bounds):
                if len(chunk):
                    groups[int(pids[chunk[0]])] = chunk
        idx = groups.get(p)
        rows = table.take(pa.array(idx)) if idx is not None else table.slice(0, 0)
        if rows.num_rows != staged.partitions[p][1]:
            raise StagedDataLostError(
                f"staging file {path} holds {rows.num_rows} records for partition {p} of "
                f"topic {topic!r}, its transaction says {staged.partitions[p][1]}"
            )
        return rows

    done: dict[int, tuple[int, int]] = {}
    for p, (since, count) in sorted(staged.partitions.items()):
        if count <= 0:
            continue

        def make(present: int, p: int = p) -> list[PreparedBatch]:
            rows = rows_of(p).slice(present)
            return prepare_records(
                rows.column("timestamp").to_numpy(),
                rows.column("key").combine_chunks(),
                rows.column("value").combine_chunks(),
                codec=codec,
                producer_id=staged.producer_id,
                sequence=staged.sequence,
                batch_bytes=batch_bytes,
            )

        if before_append is not None:
            before_append(p)
        done[p] = log.partition(topic, p).append_once(
            make,
            producer_id=staged.producer_id,
            sequence=staged.sequence,
            since=since,
            count=count,
            fsync=True,
        )
    if os.path.exists(path):
        os.remove(path)
        fsync_dir(os.path.dirname(path))
    return done


def prepare_records(
    timestamps: np.ndarray,
    keys: pa.Array,
    values: pa.Array,
    *,
    codec: int,
    producer_id: int,
    sequence: int,
    batch_bytes: int = COMMIT_BATCH_BYTES,
) -> list[PreparedBatch]:
    """Records as batches of about ``batch_bytes``, each carrying ``producer_id``
    and base sequence ``sequence`` (epoch 0)."""
    from sluice.log.producer import batch_cuts, record_sizes

    if len(values) == 0:
        return []
    klen, _ = binary_parts(keys)
    vlen, _ = binary_parts(values)
    cuts = batch_cuts(record_sizes(klen, vlen), batch_bytes)
    return [
        prepare_batch(
            timestamps[a:b],
            keys.slice(a, b - a),
            values.slice(a, b - a),
            codec=codec,
            producer_id=producer_id,
            producer_epoch=0,
            base_sequence=sequence,
        )
        for a, b in itertools.pairwise(cuts)
    ]


__all__ = [
    "COMMIT_BATCH_BYTES",
    "STAGED_SCHEMA",
    "StagedDataLostError",
    "StagedFile",
    "StagingFile",
    "commit_staged",
    "prepare_records",
    "read_staged",
]
