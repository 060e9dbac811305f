"""Retention: deleting old segments by age and by size, and the maintenance pass.

As in Kafka, whole closed segments are deleted from the oldest on: by age when
a segment's newest record is older than ``retention`` (a non-empty active
segment that is entirely expired is rolled first, so it can go too), and by
size while the partition without its oldest segment is still at least
``retention_bytes``. The log start offset moves up to the first remaining
segment; consumers positioned before it are reset (``auto.offset.reset``).

With ``archive=True``, closed segments are first copied to Parquet; then the
local copies are bounded by ``local_retention``/``local_retention_bytes``
(kept if unset) and the topic's ``retention``/``retention_bytes`` bound the
archive and local files together.

:func:`maintain_partition` runs archiving, compaction and retention under the
partition's cleaner lock, after bringing the producer-state snapshot
(:mod:`sluice.log.producer_state`) up to the active segment, so that it covers
whatever they remove. It runs after every segment roll (in the producing
process) and on demand (``Log.maintain()``, ``sluice topic maintain``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from typing import Any

from sluice.log.archive import (
    archive_max_timestamp,
    archive_segment,
    archived_files,
    delete_archived,
)
from sluice.log.compaction import compact_partition
from sluice.log.partition import Partition, now_ms
from sluice.log.producer_state import refresh as refresh_producer_state
from sluice.log.segment import list_segments


@contextlib.contextmanager
def cleaner_lock(partition: Partition, *, wait: bool = False) -> Iterator[bool]:
    """Hold the partition's cleaner lock; yields False if another cleaner has it."""
    fd = os.open(os.path.join(partition.dir, ".cleaner.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _delete_segment(partition: Partition, base: int) -> None:
    for ext in (".log", ".index", ".timeindex"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partition.segment_file(base, ext))


def _sizes(partition: Partition, bases: list[int]) -> dict[int, int]:
    out = {}
    for b in bases:
        try:
            out[b] = os.path.getsize(partition.segment_file(b))
        except FileNotFoundError:
            out[b] = 0
    return out


def expired_prefix(
    partition: Partition,
    closed: list[int],
    sizes: dict[int, int],
    total: int,
    retention_ms: int | None,
    retention_bytes: int | None,
    now: int,
) -> list[int]:
    """The oldest closed segments that age or size retention deletes."""
    out: list[int] = []
    for b in closed:
        too_old = (
            retention_ms is not None and partition.segment_max_timestamp(b) < now - retention_ms
        )
        too_big = retention_bytes is not None and total - sizes[b] >= retention_bytes
        if not (too_old or too_big):
            break
        out.append(b)
        total -= sizes[b]
    return out


def maintain_partition(log: Any, partition: Partition, *, now: int | None = None) -> dict[str, Any]:
    """Archive, compact and apply retention to one partition (skipped if another
    process is already cleaning it). Returns what was done."""
    cfg = partition.config
    done: dict[str, Any] = {"partition": partition.index}
    now = now_ms() if now is None else now
    with cleaner_lock(partition) as got:
        if not got:
            done["skipped"] = "another cleaner is running"
            return done
        st = partition.state()
        if (
            cfg.retention_ms is not None
            and st.active_end > 0
            and st.active_max_ts < now - cfg.retention_ms
        ):
            partition.roll()  # an entirely expired active segment can go too
            st = partition.state()
        # the producer state covers the closed segments before anything removes them
        refresh_producer_state(partition, now=now)
        bases = list_segments(partition.dir)
        closed = [b for b in bases if b < st.active_base]
        if cfg.archive:
            archived = []
            for i, b in enumerate(closed):
                if archive_segment(partition, b, bases[i + 1]) is not None:
                    archived.append(b)
            done["archived"] = archived
        if cfg.compact:
            done["compaction"] = compact_partition(partition, now=now)
            bases = list_segments(partition.dir)
            closed = [b for b in bases if b < st.active_base]
        sizes = _sizes(partition, bases)
        total = sum(sizes.values())
        deleted: list[int] = []
        if cfg.archive:
            files = archived_files(partition)
            done_bases = {f[0] for f in files}
            local = [b for b in closed if b in done_bases]
            deleted = expired_prefix(
                partition,
                local,
                sizes,
                total,
                cfg.local_retention_ms,
                cfg.local_retention_bytes,
                now,
            )
            # the topic's retention bounds archive + local data together
            arch_total = sum(os.path.getsize(p) for _, _, p in files)
            gone = []
            for _first, _, path in files:
                too_old = (
                    cfg.retention_ms is not None
                    and archive_max_timestamp(path) < now - cfg.retention_ms
                )
                too_big = (
                    cfg.retention_bytes is not None
                    and arch_total + total - os.path.getsize(path) >= cfg.retention_bytes
                )
                if not (too_old or too_big):
                    break
                arch_total -= os.path.getsize(path)
                gone.append(path)
            delete_archived(gone)
            done["archive_deleted"] = len(gone)
        elif cfg.retention_ms is not None or cfg.retention_bytes is not None:
            deleted = expired_prefix(
                partition, closed, sizes, total, cfg.retention_ms, cfg.retention_bytes, now
            )
        for b in deleted:
            _delete_segment(partition, b)
        done["deleted_segments"] = deleted
        if deleted:
            partition.bump_generation()
    return done


__all__ = ["cleaner_lock", "expired_prefix", "maintain_partition"]
