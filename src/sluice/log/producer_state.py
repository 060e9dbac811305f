"""Producer state: which producer ids and sequences a partition holds, kept durably
past retention (Kafka's producer-state ``.snapshot`` files).

Every batch header carries its producer's id and base sequence (see
:mod:`sluice.log.format`). The exactly-once log sink's idempotent commit
(:meth:`~sluice.log.partition.Partition.append_once`) counts the records of a
producer id and sequence already in the partition; once retention deleted
their segment (or compaction emptied their batch), the headers are gone. So,
as in Kafka, each partition keeps a **snapshot** of the producer state of its
closed segments in ``producer-state.snapshot``:

- ``covered``: the state folds in every batch below this offset (a segment
  boundary; everything from it on is read from the log itself);
- per producer id, the batches (base sequence, base offset, records) of its
  last :data:`RECENT_SEQUENCES` sequences, when the snapshot last saw one of its
  batches, and ``forgotten``: below this offset, batches of older sequences of
  it were dropped;
- ``unknown``: below this offset, batches of producer ids no longer in the
  state may have existed (expired ids, or a snapshot rebuilt after retention).

It is written by whoever holds the partition's cleaner lock: after a segment
rolls (maintenance), and always *before* retention, local-retention archiving
or compaction remove anything (they cover the closed segments first). A
snapshot is written atomically (temporary file, ``fsync``, rename, ``fsync`` of
the directory) and checksummed (CRC-32C). A missing one is rebuilt from the
local segments; a corrupt one is logged as a warning and rebuilt; one that
covers more than the log (records truncated by recovery) is cut back.

A producer id the snapshot has not seen in a batch for the topic's
``producer_expiration`` (Kafka's ``producer.id.expiration.ms``; 7 days here,
the log sink's ``transaction_timeout``) is dropped, which bounds the state.

Counting (:meth:`ProducerState.count`) answers from the snapshot for offsets
below ``covered``, or says it cannot tell (``None``: the id's batches there
were dropped, expired, or lost with a missing snapshot); the partition then
falls back to its local segments when they still hold everything, and
otherwise refuses (:class:`ProducerStateUnknownError`) rather than appending
records twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from crc32c import crc32c

from sluice.log.config import fsync_dir
from sluice.log.errors import LogError
from sluice.log.segment import list_segments

if TYPE_CHECKING:
    from sluice.log.partition import Partition

_logger = logging.getLogger("sluice.log")

#: File name of a partition's producer-state snapshot.
SNAPSHOT_NAME = "producer-state.snapshot"
#: Sequences kept per producer id (Kafka keeps the last 5 batches).
RECENT_SEQUENCES = 5

_MAGIC = b"SLPS"
_VERSION = 1
# magic, version, crc32c (of everything after it), covered, unknown, producers, batches
_HEAD = struct.Struct("<4sHIqqqq")
_CRC_FROM = 4 + 2 + 4
_PRODUCERS = np.dtype([("pid", "<i8"), ("seen", "<i8"), ("forgotten", "<i8"), ("n", "<i8")])
_BATCHES = np.dtype([("seq", "<i8"), ("base", "<i8"), ("records", "<i8")])


class ProducerStateUnknownError(LogError):
    """The partition cannot tell whether records of a producer id were appended:
    they were removed from the log and the producer state no longer knows them."""


class ProducerStateCorruptError(LogError):
    """A producer-state snapshot failed its checksum or does not parse."""


@dataclass
class ProducerEntry:
    """What the state knows of one producer id: ``groups`` are its batches
    ``(base offset, records)`` per sequence, oldest first (consecutive groups
    have different sequences)."""

    seen_ms: int
    forgotten: int = 0
    groups: list[tuple[int, list[tuple[int, int]]]] = field(default_factory=list)

    def end(self) -> int:
        """The offset after its newest batch the state still holds."""
        return max((b + n for _, bs in self.groups for b, n in bs), default=0)


@dataclass
class ProducerState:
    """The producer state of a partition's offsets below ``covered``."""

    covered: int = 0
    unknown: int = 0
    producers: dict[int, ProducerEntry] = field(default_factory=dict)

    # -- updates -------------------------------------------------------------------------
    def apply(self, producer_id: int, sequence: int, base: int, records: int, now: int) -> None:
        """Fold in one batch (producer id ``< 0``: a batch without a producer, skipped)."""
        if producer_id < 0:
            return
        e = self.producers.get(producer_id)
        if e is None:
            # batches of this id below ``unknown`` may have been expired with it
            e = self.producers[producer_id] = ProducerEntry(now, forgotten=self.unknown)
        e.seen_ms = max(e.seen_ms, now)
        if e.groups and e.groups[-1][0] == sequence:
            e.groups[-1][1].append((base, records))
            return
        e.groups.append((sequence, [(base, records)]))
        while len(e.groups) > RECENT_SEQUENCES:
            _, dropped = e.groups.pop(0)
            e.forgotten = max(e.forgotten, *(b + n for b, n in dropped))

    def expire(self, now: int, expiration_ms: int | None) -> list[int]:
        """Drop the producer ids not seen for ``expiration_ms``; returns them."""
        if expiration_ms is None:
            return []
        gone = [pid for pid, e in self.producers.items() if e.seen_ms <= now - expiration_ms]
        for pid in gone:
            e = self.producers.pop(pid)
            self.unknown = max(self.unknown, e.forgotten, e.end())
        return gone

    def truncate(self, end: int) -> None:
        """Forget batches at ``end`` and after (the log was cut back there)."""
        if self.covered <= end:
            return
        self.covered = end
        self.unknown = min(self.unknown, end)
        for pid in list(self.producers):
            e = self.producers[pid]
            e.forgotten = min(e.forgotten, end)
            groups = []
            for seq, bs in e.groups:
                kept = [(b, n) for b, n in bs if b < end]
                if kept:
                    groups.append((seq, kept))
            e.groups = groups
            if not groups:
                del self.producers[pid]

    # -- queries -------------------------------------------------------------------------
    def count(self, producer_id: int, sequence: int, since: int) -> int | None:
        """Records of ``producer_id`` with base sequence ``sequence`` in batches at
        offsets from ``since`` to ``covered``; ``None`` if the state cannot tell."""
        if since >= self.covered:
            return 0
        e = self.producers.get(producer_id)
        if since < (self.unknown if e is None else e.forgotten):
            return None
        if e is None:
            return 0
        return sum(n for seq, bs in e.groups if seq == sequence for b, n in bs if b >= since)

    # -- bytes ---------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        prods = np.zeros(len(self.producers), _PRODUCERS)
        nb = sum(len(bs) for e in self.producers.values() for _, bs in e.groups)
        batches = np.zeros(nb, _BATCHES)
        i = 0
        for k, (pid, e) in enumerate(self.producers.items()):
            n = 0
            for seq, bs in e.groups:
                for b, r in bs:
                    batches[i] = (seq, b, r)
                    i += 1
                    n += 1
            prods[k] = (pid, e.seen_ms, e.forgotten, n)
        body = prods.tobytes() + batches.tobytes()
        rest = struct.pack("<qqqq", self.covered, self.unknown, len(prods), nb) + body
        return _MAGIC + struct.pack("<HI", _VERSION, crc32c(rest)) + rest

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "producer state") -> ProducerState:
        if len(data) < _HEAD.size or data[:4] != _MAGIC:
            raise ProducerStateCorruptError(f"{where}: not a producer-state snapshot")
        _, version, crc, covered, unknown, np_, nb = _HEAD.unpack_from(data)
        if version != _VERSION:
            raise ProducerStateCorruptError(f"{where}: unknown snapshot version {version}")
        if crc32c(memoryview(data)[_CRC_FROM:]) != crc:
            raise ProducerStateCorruptError(f"{where}: checksum mismatch")
        off = _HEAD.size
        need = off + np_ * _PRODUCERS.itemsize + nb * _BATCHES.itemsize
        if np_ < 0 or nb < 0 or len(data) != need:
            raise ProducerStateCorruptError(f"{where}: truncated ({len(data)} of {need} bytes)")
        prods = np.frombuffer(data, _PRODUCERS, np_, off)
        batches = np.frombuffer(data, _BATCHES, nb, off + np_ * _PRODUCERS.itemsize)
        if int(prods["n"].sum()) != nb:
            raise ProducerStateCorruptError(f"{where}: batch counts do not add up")
        st = cls(covered=int(covered), unknown=int(unknown))
        i = 0
        for pid, seen, forgotten, n in prods.tolist():
            e = ProducerEntry(seen, forgotten)
            for seq, base, records in batches[i : i + n].tolist():
                if e.groups and e.groups[-1][0] == seq:
                    e.groups[-1][1].append((base, records))
                else:
                    e.groups.append((seq, [(base, records)]))
            i += n
            st.producers[pid] = e
        return st


# -- files -----------------------------------------------------------------------------------
def snapshot_path(partition: Partition) -> str:
    return os.path.join(partition.dir, SNAPSHOT_NAME)


def identity(partition: Partition) -> tuple[int, int, int] | None:
    """Changes whenever the snapshot file is replaced (``None`` if missing)."""
    try:
        s = os.stat(snapshot_path(partition))
    except FileNotFoundError:
        return None
    return (s.st_ino, s.st_mtime_ns, s.st_size)


def read_snapshot(partition: Partition) -> ProducerState | None:
    """The snapshot on disk; ``None`` if missing. Raises
    :class:`ProducerStateCorruptError`."""
    path = snapshot_path(partition)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return ProducerState.from_bytes(data, where=path)


def write_snapshot(partition: Partition, state: ProducerState) -> None:
    """Replace the snapshot atomically: temporary file, fsync, rename, fsync of the
    directory. Only the holder of the cleaner lock (or a creator) writes it."""
    path = snapshot_path(partition)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(state.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    fsync_dir(partition.dir)


def fold(partition: Partition, state: ProducerState, upto: int, now: int) -> None:
    """Fold the batches of the segments from ``state.covered`` to ``upto`` (closed
    segments only) into ``state``. Offsets below the first local segment that
    were never folded are lost: they become ``unknown``."""
    from sluice.log.partition import iter_headers

    if upto <= state.covered:
        return
    bases = list_segments(partition.dir)
    if not bases or bases[0] > state.covered:
        lost = bases[0] if bases else upto
        state.unknown = max(state.unknown, min(lost, upto))
    for i, base in enumerate(bases):
        end = bases[i + 1] if i + 1 < len(bases) else None
        if base >= upto or (end is not None and end <= state.covered):
            continue
        try:
            fd = os.open(partition.segment_file(base), os.O_RDONLY)
        except FileNotFoundError:  # pragma: no cover - only the cleaner deletes
            continue
        try:
            for h in iter_headers(fd, 0, os.fstat(fd).st_size):
                if h.base_offset >= upto:
                    break
                if h.base_offset >= state.covered:
                    state.apply(
                        h.producer_id, h.base_sequence, h.base_offset, h.last_offset_delta + 1, now
                    )
        finally:
            os.close(fd)
    state.covered = upto


def refresh(partition: Partition, *, now: int | None = None) -> ProducerState:
    """Bring the snapshot up to the active segment: load it (rebuild it from the
    log if missing or corrupt, cut it back if the log is shorter), fold in the
    closed segments, expire producer ids, and write it if anything changed. The
    caller holds the partition's cleaner lock."""
    from sluice.log.partition import now_ms

    now = now_ms() if now is None else now
    changed = False
    prefix = SNAPSHOT_NAME + ".tmp."
    for name in os.listdir(partition.dir):
        if name.startswith(prefix):  # left by a writer killed mid-write
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(partition.dir, name))
    try:
        state = read_snapshot(partition)
    except ProducerStateCorruptError as e:
        _logger.warning("%s; rebuilding the producer state of %s from the log", e, partition.name)
        state = None
    if state is None:
        state = ProducerState()
        changed = True
    active = partition.state().active_base
    if state.covered > active:
        _logger.warning(
            "producer state of %s covers offsets up to %d, the log ends before: cut back",
            partition.name,
            state.covered,
        )
        state.truncate(active)
        changed = True
    if state.covered < active:
        fold(partition, state, active, now)
        changed = True
    if state.expire(now, partition.config.producer_expiration_ms):
        changed = True
    if changed:
        write_snapshot(partition, state)
    return state


__all__ = [
    "RECENT_SEQUENCES",
    "SNAPSHOT_NAME",
    "ProducerEntry",
    "ProducerState",
    "ProducerStateCorruptError",
    "ProducerStateUnknownError",
    "fold",
    "identity",
    "read_snapshot",
    "refresh",
    "snapshot_path",
    "write_snapshot",
]
