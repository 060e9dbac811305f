"""One partition of a topic: appends under a writer lock, segment rolls, recovery.

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
it covers, from the batch headers after it), and appends only the missing
ones (see :mod:`sluice.log.transactions`).

Recovery (:meth:`Partition.recover`) runs when the head cannot be trusted (the
machine rebooted since it was written, it is missing or half written): every
segment from the recovery point on is re-read, checksums verified, the first
bad or incomplete batch and everything after it are truncated, and the indexes
of the checked segments are rebuilt. Missing index files of older segments are
rebuilt too.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sluice.log.config import TopicConfig, fsync_dir
from sluice.log.errors import LogError, LogFullError
from sluice.log.format import HEADER_SIZE, BatchHeader, PreparedBatch, check_crc, parse_header
from sluice.log.index import (
    OFFSET_ENTRY,
    TIME_ENTRY,
    load_offset_index,
    load_time_index,
    lookup_position,
    pack_offset_entry,
    pack_time_entry,
    write_index_files,
)
from sluice.log.segment import (
    BOOT_ID,
    MIN_TS,
    Head,
    HeadState,
    list_segments,
    read_batches,
    segment_path,
)

if TYPE_CHECKING:
    from sluice.log.producer_state import ProducerState

_UNKNOWN_BOOT = b"\0" * 16
_IOV_MAX = 512
_SCAN_CHUNK = 8 << 20
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: Relative offsets in the index are 32-bit: a segment rolls before exceeding this span.
_MAX_SEGMENT_SPAN = 2**31 - 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class SegmentScan:
    """What a full scan of one segment found."""

    valid_end: int = 0
    size: int = 0
    next_offset: int | None = None
    max_ts: int = MIN_TS
    batches: int = 0
    records: int = 0
    offset_entries: list[tuple[int, int]] = field(default_factory=list)
    time_entries: list[tuple[int, int]] = field(default_factory=list)
    last_index_pos: int = 0
    problem: str | None = None


def scan_segment(
    path: str,
    base: int,
    interval: int,
    *,
    verify: bool = True,
    closed: bool = False,
    chunk: int = _SCAN_CHUNK,
) -> SegmentScan:
    """Read a segment from its start, ``chunk`` bytes at a time, verifying checksums,
    and compute its indexes. Stops at the first torn, malformed or corrupt batch
    (``problem`` says which)."""
    out = SegmentScan()
    fd = os.open(path, os.O_RDONLY)
    try:
        out.size = os.fstat(fd).st_size
        pos, prev_next = 0, base
        while pos < out.size:
            batches, _, problem = read_batches(fd, pos, out.size, chunk)
            for bpos, h, buf in batches:
                if verify and not check_crc(h, buf):
                    out.problem = f"checksum mismatch at position {bpos}"
                    break
                if h.base_offset < prev_next or h.last_offset - base > _MAX_SEGMENT_SPAN:
                    out.problem = f"offset {h.base_offset} out of order at position {bpos}"
                    break
                rel = h.base_offset - base
                if bpos > 0 and bpos - out.last_index_pos >= interval:
                    out.offset_entries.append((rel, bpos))
                    out.time_entries.append((out.max_ts, rel))
                    out.last_index_pos = bpos
                out.max_ts = max(out.max_ts, h.max_timestamp)
                out.batches += 1
                out.records += h.record_count
                prev_next = h.next_offset
                out.next_offset = prev_next
                pos = bpos + h.length
            if out.problem is None:
                out.problem = problem
            if out.problem is not None or not batches:
                break
        out.valid_end = pos
    finally:
        os.close(fd)
    if closed and out.next_offset is not None:
        out.time_entries.append((out.max_ts, out.next_offset - base))
    return out


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
                    self._recover_locked()
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
            return self._recover_locked()
        if st.writer != self._token or not self._checked:
            st = self._check_tail(st)
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

    def _check_tail(self, st: HeadState) -> HeadState:
        """Another writer (maybe dead) wrote since our last append: cut a torn tail,
        fix torn index entries, drop segments a crashed roll left behind."""
        if self._active_base != st.active_base:
            self._open_active(st.active_base)
        assert self._log_fd is not None and self._idx_fd is not None and self._tidx_fd is not None
        size = os.fstat(self._log_fd).st_size
        if size < st.active_end:
            return self._recover_locked()
        if size > st.active_end:
            os.ftruncate(self._log_fd, st.active_end)
        for fd, entry in ((self._idx_fd, OFFSET_ENTRY), (self._tidx_fd, TIME_ENTRY)):
            isize = os.fstat(fd).st_size
            if isize % entry.itemsize:
                os.ftruncate(fd, isize - isize % entry.itemsize)
        bases = list_segments(self.dir)
        for b in bases:
            if b > st.active_base:
                self._delete_segment_files(b)
        if not self._checked:
            self._ensure_indexes([b for b in bases if b < st.active_base])
        self._checked = True
        st.writer = self._token
        self._head_write(st)
        return st

    def _head_write(self, st: HeadState) -> None:
        assert self._head is not None
        self._head.write(st)

    def _delete_segment_files(self, base: int) -> None:
        for ext in (".log", ".index", ".timeindex"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.segment_file(base, ext))

    def _ensure_indexes(self, bases: Sequence[int]) -> None:
        for b in bases:
            if os.path.exists(self.segment_file(b, ".index")) and os.path.exists(
                self.segment_file(b, ".timeindex")
            ):
                continue
            scan = scan_segment(
                self.segment_file(b), b, self.config.index_interval_bytes, closed=True
            )
            write_index_files(self.segment_file(b, ""), scan.offset_entries, scan.time_entries)

    def recover(self) -> HeadState:
        """Re-validate the log from the recovery point (see the module docstring)."""
        with self._locked():
            self._open_head()
            return self._recover_locked()

    def _read_recovery_point(self) -> int:
        try:
            with open(os.path.join(self.dir, "recovery-point")) as f:
                return int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write_recovery_point(self, offset: int) -> None:
        path = os.path.join(self.dir, "recovery-point")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(offset))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _recover_locked(self) -> HeadState:
        if self._head is None:
            self._head = Head(os.path.join(self.dir, "head"), create=True)
        old = self._head.read(spins=1000) if self._head.valid() else None
        self._close_active()
        bases = list_segments(self.dir)
        if not bases:
            start = self._first_offset_hint()
            for ext in (".log", ".index", ".timeindex"):
                open(self.segment_file(start, ext), "ab").close()
            bases = [start]
        rp = self._read_recovery_point()
        first = max(0, bisect.bisect_right(bases, rp) - 1)
        self._ensure_indexes(bases[:first])
        interval = self.config.index_interval_bytes
        scan = SegmentScan()
        for i in range(first, len(bases)):
            b = bases[i]
            last = i == len(bases) - 1
            scan = scan_segment(self.segment_file(b), b, interval, closed=not last)
            if scan.valid_end < scan.size:
                with open(self.segment_file(b), "r+b") as f:
                    f.truncate(scan.valid_end)
                    f.flush()
                    os.fsync(f.fileno())
                for later in bases[i + 1 :]:
                    self._delete_segment_files(later)
                bases = bases[: i + 1]
                scan = scan_segment(self.segment_file(b), b, interval, closed=False)
                write_index_files(self.segment_file(b, ""), scan.offset_entries, scan.time_entries)
                break
            write_index_files(self.segment_file(b, ""), scan.offset_entries, scan.time_entries)
        active = bases[-1]
        next_offset = scan.next_offset if scan.next_offset is not None else active
        st = HeadState(
            next_offset=next_offset,
            active_base=active,
            active_end=scan.valid_end,
            active_created_ms=old.active_created_ms
            if old and old.active_base == active
            else now_ms(),
            active_max_ts=scan.max_ts,
            last_index_pos=scan.last_index_pos,
            generation=(old.generation if old else 0) + 1,
            boot_id=BOOT_ID,
            writer=self._token,
        )
        self._head.write(st)
        self._open_active(active)
        self._checked = True
        self._seg_cache = None
        return st

    def _first_offset_hint(self) -> int:
        """Where a partition with no local segment starts: after its archive, if any."""
        from sluice.log.archive import archived_end

        return archived_end(self)

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
            pstate, ident = self._producer_state()
            with self._locked():
                st = self._sync()
                present = self._producer_records(st, pstate, producer_id, sequence, since)
                if self._pstate_identity() != ident:
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
            pstate, ident = self._producer_state()
            with self._locked():
                n = self._producer_records(self._sync(), pstate, producer_id, sequence, since)
                if self._pstate_identity() == ident:
                    return n

    def _pstate_identity(self) -> tuple[int, int, int] | None:
        from sluice.log.producer_state import identity

        return identity(self)

    def _producer_state(self) -> tuple[ProducerState, tuple[int, int, int] | None]:
        """The producer-state snapshot (cached while its file is unchanged); rebuilt,
        under the cleaner lock, when missing, corrupt or behind the log's start."""
        from sluice.log.producer_state import (
            ProducerStateCorruptError,
            identity,
            read_snapshot,
            refresh,
        )
        from sluice.log.retention import cleaner_lock

        ident = identity(self)
        cached = self._pstate_cache
        if ident is not None and cached is not None and cached[1] == ident:
            return cached
        state = None
        if ident is not None:
            try:
                state = read_snapshot(self)
            except (ProducerStateCorruptError, FileNotFoundError):
                state = None
        if state is None or state.covered > self.state().active_base:
            with cleaner_lock(self, wait=True):
                refresh(self)
                ident = identity(self)
                state = read_snapshot(self)
            assert state is not None
        self._pstate_cache = (state, ident)
        return state, ident

    def _producer_records(
        self, st: HeadState, pstate: ProducerState, producer_id: int, sequence: int, since: int
    ) -> int:
        from sluice.log.producer_state import ProducerStateUnknownError

        known, scan_from = 0, since
        if since < pstate.covered:
            n = pstate.count(producer_id, sequence, since)
            if n is not None:
                known, scan_from = n, pstate.covered
            else:
                bases = list_segments(self.dir)
                start = bases[0] if bases else st.active_base
                if since < start or self.config.compact:
                    raise ProducerStateUnknownError(
                        f"partition {self.name} cannot tell how many records of producer "
                        f"{producer_id:#x} with sequence {sequence} it holds from offset "
                        f"{since}: records from there were removed (the log starts at "
                        f"{start}{', compacted' if self.config.compact else ''}) and the "
                        "producer state no longer knows that producer there (it expired "
                        "after producer_expiration, used more than "
                        f"{_recent_sequences()} sequences since, or the snapshot was lost)"
                    )
        return known + self._scan_producer_records(st, producer_id, sequence, scan_from)

    def _scan_producer_records(
        self, st: HeadState, producer_id: int, sequence: int, since: int
    ) -> int:
        if since >= st.next_offset:
            return 0
        bases = list_segments(self.dir)
        first = max(0, bisect.bisect_right(bases, since) - 1)
        total = 0
        for base in bases[first:]:
            if base > st.active_base:
                break
            try:
                fd = os.open(self.segment_file(base), os.O_RDONLY)
            except FileNotFoundError:  # deleted meanwhile: the caller sees the new snapshot
                continue
            try:
                end = st.active_end if base == st.active_base else os.fstat(fd).st_size
                pos = 0
                if since > base:
                    rel, pos = lookup_position(
                        load_offset_index(self.segment_file(base, ".index")), since - base
                    )
                    if pos:
                        h = parse_header(os.pread(fd, HEADER_SIZE, pos))
                        if h is None or h.base_offset != base + rel:
                            pos = 0  # a stale index (the segment was rewritten): scan
                for h in iter_headers(fd, pos, end):
                    if (
                        h.producer_id == producer_id
                        and h.base_sequence == sequence
                        and h.base_offset >= since
                    ):
                        total += h.last_offset_delta + 1
            finally:
                os.close(fd)
        return total

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
                    size + b.size > seg_bytes or span + b.last_offset_delta >= _MAX_SEGMENT_SPAN
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
        self._write_recovery_point(new)
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


def _recent_sequences() -> int:
    from sluice.log.producer_state import RECENT_SEQUENCES

    return RECENT_SEQUENCES


def iter_headers(fd: int, pos: int, end: int, chunk: int = 1 << 16) -> Iterator[BatchHeader]:
    """The batch headers of a segment file from byte ``pos`` (a batch start) to
    ``end``, read a chunk at a time without reading payloads (no checksum check:
    only published batches are walked). Stops at the first implausible header."""
    buf = b""
    bstart = pos
    while pos + HEADER_SIZE <= end:
        if pos < bstart or pos + HEADER_SIZE > bstart + len(buf):
            buf = os.pread(fd, max(HEADER_SIZE, min(chunk, end - pos)), pos)
            bstart = pos
            if len(buf) < HEADER_SIZE:
                return
        h = parse_header(buf, pos - bstart)
        if h is None:
            return
        yield h
        pos += h.length


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
