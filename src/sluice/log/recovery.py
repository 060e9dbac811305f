"""Repairing a partition after a crash: tail checks, recovery, recovery point.

Recovery (:func:`recover_locked`, run by :meth:`Partition.recover
<sluice.log.partition.Partition.recover>`) runs when the head cannot be
trusted (the machine rebooted since it was written, it is missing or half
written): every segment from the recovery point on is re-read, checksums
verified, the first bad or incomplete batch and everything after it are
truncated, and the indexes of the checked segments are rebuilt. Missing index
files of older segments are rebuilt too.

The lighter :func:`check_tail` runs when another writer (maybe one that died
mid-append) wrote since this one last did: it cuts a torn tail after the
published end, torn index entries, and the segments a crashed roll left behind.

The recovery point (written at each segment roll, once the closed segment is
fsynced) is the base offset recovery starts from. Every function here runs
under the partition's writer lock.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sluice.log.clock import now_ms
from sluice.log.index import OFFSET_ENTRY, TIME_ENTRY, write_index_files
from sluice.log.segment import BOOT_ID, Head, HeadState, list_segments
from sluice.log.segment_scan import SegmentScan, scan_segment

if TYPE_CHECKING:
    from sluice.log.partition import Partition


def check_tail(partition: Partition, st: HeadState) -> HeadState:
    """Another writer (maybe dead) wrote since our last append: cut a torn tail,
    fix torn index entries, drop segments a crashed roll left behind."""
    if partition._active_base != st.active_base:
        partition._open_active(st.active_base)
    assert (
        partition._log_fd is not None
        and partition._idx_fd is not None
        and partition._tidx_fd is not None
    )
    size = os.fstat(partition._log_fd).st_size
    if size < st.active_end:
        return recover_locked(partition)
    if size > st.active_end:
        os.ftruncate(partition._log_fd, st.active_end)
    for fd, entry in ((partition._idx_fd, OFFSET_ENTRY), (partition._tidx_fd, TIME_ENTRY)):
        isize = os.fstat(fd).st_size
        if isize % entry.itemsize:
            os.ftruncate(fd, isize - isize % entry.itemsize)
    bases = list_segments(partition.dir)
    for b in bases:
        if b > st.active_base:
            delete_segment_files(partition, b)
    if not partition._checked:
        ensure_indexes(partition, [b for b in bases if b < st.active_base])
    partition._checked = True
    st.writer = partition._token
    partition._head_write(st)
    return st


def delete_segment_files(partition: Partition, base: int) -> None:
    """Delete the files (log and both indexes) of segment ``base``, if present."""
    for ext in (".log", ".index", ".timeindex"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partition.segment_file(base, ext))


def ensure_indexes(partition: Partition, bases: Sequence[int]) -> None:
    """Rebuild the index files of the closed segments ``bases`` that miss one."""
    for b in bases:
        if os.path.exists(partition.segment_file(b, ".index")) and os.path.exists(
            partition.segment_file(b, ".timeindex")
        ):
            continue
        scan = scan_segment(
            partition.segment_file(b), b, partition.config.index_interval_bytes, closed=True
        )
        write_index_files(partition.segment_file(b, ""), scan.offset_entries, scan.time_entries)


def read_recovery_point(partition: Partition) -> int:
    """The offset recovery starts from (0 if the file is missing or unreadable)."""
    try:
        with open(os.path.join(partition.dir, "recovery-point")) as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def write_recovery_point(partition: Partition, offset: int) -> None:
    """Durably replace the recovery point with ``offset``."""
    path = os.path.join(partition.dir, "recovery-point")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(offset))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def recover_locked(partition: Partition) -> HeadState:
    """Re-validate the log from the recovery point (see the module docstring) and
    publish the head state found. Returns it."""
    if partition._head is None:
        partition._head = Head(os.path.join(partition.dir, "head"), create=True)
    old = partition._head.read(spins=1000) if partition._head.valid() else None
    partition._close_active()
    bases = list_segments(partition.dir)
    if not bases:
        start = first_offset_hint(partition)
        for ext in (".log", ".index", ".timeindex"):
            open(partition.segment_file(start, ext), "ab").close()
        bases = [start]
    rp = read_recovery_point(partition)
    first = max(0, bisect.bisect_right(bases, rp) - 1)
    ensure_indexes(partition, bases[:first])
    interval = partition.config.index_interval_bytes
    scan = SegmentScan()
    for i in range(first, len(bases)):
        b = bases[i]
        last = i == len(bases) - 1
        scan = scan_segment(partition.segment_file(b), b, interval, closed=not last)
        if scan.valid_end < scan.size:
            with open(partition.segment_file(b), "r+b") as f:
                f.truncate(scan.valid_end)
                f.flush()
                os.fsync(f.fileno())
            for later in bases[i + 1 :]:
                delete_segment_files(partition, later)
            bases = bases[: i + 1]
            scan = scan_segment(partition.segment_file(b), b, interval, closed=False)
            write_index_files(partition.segment_file(b, ""), scan.offset_entries, scan.time_entries)
            break
        write_index_files(partition.segment_file(b, ""), scan.offset_entries, scan.time_entries)
    active = bases[-1]
    next_offset = scan.next_offset if scan.next_offset is not None else active
    st = HeadState(
        next_offset=next_offset,
        active_base=active,
        active_end=scan.valid_end,
        active_created_ms=old.active_created_ms if old and old.active_base == active else now_ms(),
        active_max_ts=scan.max_ts,
        last_index_pos=scan.last_index_pos,
        generation=(old.generation if old else 0) + 1,
        boot_id=BOOT_ID,
        writer=partition._token,
    )
    partition._head.write(st)
    partition._open_active(active)
    partition._checked = True
    partition._seg_cache = None
    return st


def first_offset_hint(partition: Partition) -> int:
    """Where a partition with no local segment starts: after its archive, if any."""
    from sluice.log.archive import archived_end

    return archived_end(partition)


__all__ = [
    "check_tail",
    "delete_segment_files",
    "ensure_indexes",
    "first_offset_hint",
    "read_recovery_point",
    "recover_locked",
    "write_recovery_point",
]
