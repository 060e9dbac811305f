"""One partition of a topic: appends under a writer lock, segment rolls.

Appending (:meth:`Partition.append`) takes the partition's ``flock`` writer
lock, so any number of producer threads and processes can write the same
partition; the lock is held for one ``pwritev`` of whole batches, not for the
producer's life. Under the lock the writer reads the shared head; if another
writer appended since, it picks up from there, and if that writer died in the
middle of an append (its process was killed), the torn bytes after the last
published batch are cut off before anything else is written. Only whole,
checksummed batches below the published high watermark are ever read.

:meth:`Partition.append_once` is the idempotent append of the exactly-once
log sink: under the same lock it first counts the records a producer id and
sequence already have in the partition after a given offset (from the
producer-state snapshot, :mod:`sluice.log.producer_state`, below the offset
it covers, from the batch headers after it; see
:mod:`sluice.log.producer_records`), and appends only the missing ones (see
:mod:`sluice.log.transactions`).

Recovery (:meth:`Partition.recover`) runs when the head cannot be trusted (the
machine rebooted since it was written, it is missing or half written): every
segment from the recovery point on is re-read, checksums verified, the first
bad or incomplete batch and everything after it are truncated, and the indexes
of the checked segments are rebuilt. Missing index files of older segments are
rebuilt too. The repair code is in :mod:`sluice.log.recovery`; segment scans
are in :mod:`sluice.log.segment_scan`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from sluice.log.clock import now_ms
from sluice.log.config import TopicConfig, fsync_dir
from sluice.log.errors import LogError, LogFullError
from sluice.log.format import PreparedBatch
from sluice.log.index import load_time_index, pack_offset_entry, pack_time_entry
from sluice.log.producer_records import (
    cached_producer_state,
    count_producer_records,
    pstate_identity,
)
from sluice.log.recovery import check_tail, recover_locked, write_recovery_point
from sluice.log.segment import (
    BOOT_ID,
    MIN_TS,
    Head,
    HeadState,
    list_segments,
    segment_path,
)
from sluice.log.segment_scan import MAX_SEGMENT_SPAN, SegmentScan, iter_headers, scan_segment

if TYPE_CHECKING:
    from sluice.log.producer_state import ProducerState

_UNKNOWN_BOOT = b"\0" * 16
_IOV_MAX = 512
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class Partition:
    """A partition directory: the writer side and the shared state readers use.

    Created by :class:`~sluice.log.topic.Log`; producers and consumers use it
    through :class:`~sluice.log.producer.Producer` and
    :class:`~sluice.log.consumer.Consumer`.
    """

    def __init__(self, directory: str, *, topic: str, index: int, config: TopicConfig) -> None:
        self.dir = directory
        self.topic = topic
        self.index = index
        self.config = config
        self.on_roll: Callable[[Partition], None] | None = None
        self._head: Head | None = None
        self._tlock = threading.RLock()
        self._lock_fd: int | None = None
        self._active_base: int | None = None
        self._log_fd: int | None = None
        self._idx_fd: int | None = None
        self._tidx_fd: int | None = None
        self._checked = False
        self._token = random.getrandbits(62) | 1
        self._dirty = False
        self._seg_cache: tuple[int, list[int]] | None = None
        self._pstate_cache: tuple[ProducerState, tuple[int, int, int] | None] | None = None

    def __repr__(self) -> str:
        return f"Partition({self.topic!r}, {self.index})"

    @property
    def name(self) -> str:
        return f"{self.topic}/{self.index}"

    # -- creation --------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str, *, topic: str, index: int, config: TopicConfig) -> Partition:
        """Make the directory of a new, empty partition (segment 0 and the head)."""
        os.makedirs(directory, exist_ok=True)
        for ext in (".log", ".index", ".timeindex"):
            open(segment_path(directory, 0, ext), "ab").close()
        p = cls(directory, topic=topic, index=index, config=config)
        with p._locked():
            head = Head(os.path.join(directory, "head"), create=True)
            head.write(
                HeadState(active_created_ms=now_ms(), boot_id=BOOT_ID, writer=0, generation=1)
            )
            p._head = head
        from sluice.log.producer_state import ProducerState, write_snapshot

        write_snapshot(p, ProducerState())  # a new partition: no producer yet
        return p

    # -- shared state ------------------------------------------------------------------
    def _open_head(self) -> Head:
        if self._head is None:
            path = os.path.join(self.dir, "head")
            try:
                self._head = Head(path)
            except FileNotFoundError:
                if not os.path.isdir(self.dir):
                    raise LogError(f"partition {self.name} does not exist ({self.dir})") from None
                with self._locked():
                    self._head = Head(path, create=True)
                    recover_locked(self)
        return self._head

    def state(self) -> HeadState:
        """The published state (high watermark, active segment) as of now."""
        head = self._open_head()
        st = head.read() if head.valid() else None
        if st is None or not self._trusted(st):
            with self._locked():
                st = self._sync()
        return st

    def high_watermark(self) -> int:
        """The offset the next record will get; readers see the offsets below it."""
        return self.state().next_offset

    def _trusted(self, st: HeadState) -> bool:
        return st.boot_id == BOOT_ID and (BOOT_ID != _UNKNOWN_BOOT or self._checked)

    def segments(self) -> list[int]:
        """Base offsets of the local segments (cached until the generation changes)."""
        gen = self.state().generation
        if self._seg_cache is None or self._seg_cache[0] != gen:
            self._seg_cache = (gen, list_segments(self.dir))
        return self._seg_cache[1]

    def refresh(self) -> None:
        self._seg_cache = None

    def segment_file(self, base: int, ext: str = ".log") -> str:
        return segment_path(self.dir, base, ext)

    def size_bytes(self) -> int:
        """Bytes of all local segment files."""
        total = 0
        for b in list_segments(self.dir):
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(self.segment_file(b))
        return total

    def segment_max_timestamp(self, base: int) -> int:
        """The newest record timestamp of a segment (``MIN_TS`` if empty)."""
        st = self.state()
        if base == st.active_base:
            return st.active_max_ts
        t = load_time_index(self.segment_file(base, ".timeindex"))
        if t is not None and len(t):
            return int(t["ts"][-1])
        scan = scan_segment(
            self.segment_file(base), base, self.config.index_interval_bytes, verify=False
        )
        return scan.max_ts

    # -- locking ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._tlock:
            if self._lock_fd is None:
                self._lock_fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[HeadState]:
        """Hold the writer lock (for maintenance that rewrites segments or the head)."""
        with self._locked():
            yield self._sync()

    # -- writer side ----------------------------------------------------------------------
    def _sync(self) -> HeadState:
        """Under the lock: make this writer's view current and repair what a dead
        writer left behind. Returns the head state to append after."""
        head = self._open_head()
        st = head.read(spins=1000) if head.valid() else None
        if st is None or not self._trusted(st):
            return recover_locked(self)
        if st.writer != self._token or not self._checked:
            st = check_tail(self, st)
        if self._active_base != st.active_base:
            self._open_active(st.active_base)
        return st

    def _open_active(self, base: int) -> None:
        self._close_active()
        self._log_fd = os.open(self.segment_file(base), os.O_RDWR | os.O_CREAT, 0o644)
        self._idx_fd = os.open(
            self.segment_file(base, ".index"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )
        self._tidx_fd = os.open(
            self.segment_file(base, ".timeindex"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )
        self._active_base = base

    def _close_active(self) -> None:
        for fd in (self._log_fd, self._idx_fd, self._tidx_fd):
            if fd is not None:
                os.close(fd)
        self._log_fd = self._idx_fd = self._tidx_fd = None
        self._active_base = None

    def _head_write(self, st: HeadState) -> None:
        assert self._head is not None
        self._head.write(st)

    def recover(self) -> HeadState:
        """Re-validate the log from the recovery point (see the module docstring)."""
        with self._locked():
            self._open_head()
            return recover_locked(self)

    def append(self, batches: Sequence[PreparedBatch], *, fsync: bool = False) -> tuple[int, int]:
        """Write ``batches`` (in order) and publish them. Returns ``(first offset, next
        offset)``. With ``fsync`` the data is on disk when this returns. On an I/O
        error (a full disk) the partition is left exactly as before and
        :class:`LogFullError` is raised."""
        if not batches:
            st = self.state()
            return st.next_offset, st.next_offset
        # _locked() inlined: this is the per-call cost of every append
        with self._tlock:
            if self._lock_fd is None:
                self._lock_fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                first, last, rolled = self._append_locked(self._sync(), batches, fsync)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        if rolled and self.on_roll is not None:
            self.on_roll(self)
        return first, last

    def append_once(
        self,
        make: Callable[[int], Sequence[PreparedBatch]],
        *,
        producer_id: int,
        sequence: int,
        since: int,
        count: int,
        fsync: bool = True,
    ) -> tuple[int, int]:
        """Idempotent append of ``count`` records of producer ``producer_id`` with
        sequence ``sequence`` (the exactly-once log sink's commit).

        Under the writer lock, the records of that producer and sequence at
        offsets ``>= since`` are counted (see :meth:`producer_records`: the
        producer-state snapshot for what retention may have removed, the batch
        headers for the rest); if there are ``present``, ``make(present)`` is
        called for the batches of the records still missing (the ``count -
        present`` last ones, which must carry the same producer id and sequence)
        and they are appended. So an append repeated after a crash, even one cut
        short at a segment roll, and even after retention deleted what the first
        attempt wrote, ends with each record in the log once. Returns
        ``(present, appended)`` record counts. Raises
        :class:`~sluice.log.producer_state.ProducerStateUnknownError` if the
        partition cannot tell (see :mod:`sluice.log.producer_state`).
        """
        rolled = False
        while True:
            pstate, ident = cached_producer_state(self)
            with self._locked():
                st = self._sync()
                present = count_producer_records(self, st, pstate, producer_id, sequence, since)
                if pstate_identity(self) != ident:
                    continue  # the cleaner covered more (and may have deleted): count again
                if present and fsync and self._log_fd is not None:
                    # appended by an earlier attempt that may have died before its fsync
                    os.fdatasync(self._log_fd)
                if present >= count:
                    return present, 0
                batches = make(present)
                first, last, rolled = (
                    self._append_locked(st, batches, fsync) if batches else (0, 0, False)
                )
                break
        if rolled and self.on_roll is not None:
            self.on_roll(self)
        return present, last - first

    def producer_records(self, producer_id: int, sequence: int, since: int = 0) -> int:
        """How many records the batches of producer ``producer_id`` with base sequence
        ``sequence`` and base offset ``>= since`` hold.

        Batches below the offset the producer-state snapshot covers are counted
        from it (so records deleted by retention, archived, or compacted away
        still count); the rest from the batch headers of the local segments (each
        batch counts ``last offset delta + 1`` records, which compaction keeps
        when it removes records from a batch). Raises
        :class:`~sluice.log.producer_state.ProducerStateUnknownError` when
        neither can tell.
        """
        while True:
            pstate, ident = cached_producer_state(self)
            with self._locked():
                n = count_producer_records(self, self._sync(), pstate, producer_id, sequence, since)
                if pstate_identity(self) == ident:
                    return n

    def _append_locked(
        self, st: HeadState, batches: Sequence[PreparedBatch], fsync: bool
    ) -> tuple[int, int, bool]:
        """Under the lock, after :meth:`_sync`: write ``batches``, rolling segments as
        needed. Returns ``(first offset, next offset, whether a segment rolled)``."""
        rolled = False
        first = st.next_offset
        seg_bytes = self.config.segment_bytes
        if st.active_end > 0 and now_ms() - st.active_created_ms >= self.config.segment_ms:
            st = self._roll(st)
            rolled = True
        i = 0
        while i < len(batches):
            # the batches that fit in the active segment (at least one)
            j, size = i, st.active_end
            span = st.next_offset - st.active_base
            while j < len(batches):
                b = batches[j]
                if (
                    size + b.size > seg_bytes or span + b.last_offset_delta >= MAX_SEGMENT_SPAN
                ) and (size > 0):
                    break
                size += b.size
                span += b.last_offset_delta + 1
                j += 1
            if j == i:
                st = self._roll(st)
                rolled = True
                continue
            st = self._write(st, batches[i:j], fsync)
            i = j
        return first, st.next_offset, rolled

    def _write(self, st: HeadState, batches: Sequence[PreparedBatch], fsync: bool) -> HeadState:
        assert self._log_fd is not None and self._idx_fd is not None and self._tidx_fd is not None
        interval = self.config.index_interval_bytes
        pos = start = st.active_end
        offset = st.next_offset
        max_ts = st.active_max_ts
        last_index = st.last_index_pos
        iov: list[object] = []
        idx: list[bytes] = []
        tidx: list[bytes] = []
        for b in batches:
            if pos > 0 and pos - last_index >= interval:
                rel = offset - st.active_base
                idx.append(pack_offset_entry(rel, pos))
                tidx.append(pack_time_entry(max_ts, rel))
                last_index = pos
            iov.append(b.header(offset))
            iov.extend(b.payload)
            pos += b.size
            offset += b.last_offset_delta + 1
            if b.max_timestamp > max_ts:
                max_ts = b.max_timestamp
        try:
            _pwrite_all(self._log_fd, iov, start)
            if fsync:
                os.fdatasync(self._log_fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._log_fd, start)
            if e.errno in _FULL_ERRNOS:
                raise LogFullError(
                    e.errno,
                    f"cannot append to partition {self.name}: {os.strerror(e.errno or 0)} "
                    f"(segment {self.segment_file(st.active_base)}); nothing was written. "
                    "Free disk space or lower the topic's retention",
                ) from e
            raise LogError(f"cannot append to partition {self.name}: {e}") from e
        if not fsync:
            self._dirty = True
        st = HeadState(
            next_offset=offset,
            active_base=st.active_base,
            active_end=pos,
            active_created_ms=st.active_created_ms,
            active_max_ts=max_ts,
            last_index_pos=last_index,
            generation=st.generation,
            boot_id=BOOT_ID,
            writer=self._token,
        )
        self._head_write(st)
        if idx:  # index entries are hints: written after the data is published
            with contextlib.suppress(OSError):
                os.write(self._idx_fd, b"".join(idx))
                os.write(self._tidx_fd, b"".join(tidx))
        return st

    def _roll(self, st: HeadState) -> HeadState:
        """Close the active segment (final time-index entry, fsync) and start a new one."""
        assert self._log_fd is not None and self._tidx_fd is not None
        if st.active_end > 0:
            os.write(
                self._tidx_fd, pack_time_entry(st.active_max_ts, st.next_offset - st.active_base)
            )
        for fd in (self._log_fd, self._idx_fd, self._tidx_fd):
            if fd is not None:
                os.fsync(fd)
        self._dirty = False
        new = st.next_offset
        for ext in (".log", ".index", ".timeindex"):
            fd = os.open(self.segment_file(new, ext), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.close(fd)
        fsync_dir(self.dir)
        write_recovery_point(self, new)
        st = HeadState(
            next_offset=new,
            active_base=new,
            active_end=0,
            active_created_ms=now_ms(),
            active_max_ts=MIN_TS,
            last_index_pos=0,
            generation=st.generation + 1,
            boot_id=BOOT_ID,
            writer=self._token,
        )
        self._head_write(st)
        self._open_active(new)
        self._seg_cache = None
        return st

    def roll(self) -> None:
        """Close the active segment now if it holds any record (for tests and tools)."""
        with self._locked():
            st = self._sync()
            if st.active_end > 0:
                self._roll(st)

    def bump_generation(self) -> None:
        """Tell readers that segment files changed (after retention or compaction)."""
        with self._locked():
            st = self._sync()
            st.generation += 1
            self._head_write(st)
        self._seg_cache = None

    def flush(self) -> None:
        """fsync what this writer appended (the ``interval`` durability policy). The
        fsync runs on a duplicate descriptor, without blocking appends meanwhile."""
        with self._tlock:
            if not self._dirty or self._log_fd is None:
                return
            fd = os.dup(self._log_fd)
            self._dirty = False
        try:
            os.fdatasync(fd)
        except OSError:
            self._dirty = True
            raise
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._tlock:
            with contextlib.suppress(OSError):
                self.flush()
            self._close_active()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            if self._head is not None:
                self._head.close()
                self._head = None


def _pwrite_all(fd: int, bufs: list[object], pos: int) -> None:
    """``pwritev`` every buffer (bytes, or byte-format memoryviews) at ``pos``,
    resuming after partial writes."""
    views = bufs
    i = 0
    while i < len(views):
        n = os.pwritev(fd, views[i : i + _IOV_MAX], pos)  # type: ignore[arg-type]
        if n == 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        pos += n
        while i < len(views) and n >= len(views[i]):  # type: ignore[arg-type]
            n -= len(views[i])  # type: ignore[arg-type]
            i += 1
        if n:
            if views is bufs:
                views = [memoryview(b).cast("B") for b in bufs]  # type: ignore[arg-type]
            views[i] = views[i][n:]  # type: ignore[index]


__all__ = ["Partition", "SegmentScan", "iter_headers", "now_ms", "scan_segment"]
