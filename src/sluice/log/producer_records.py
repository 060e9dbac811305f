"""Counting the records a producer id and sequence already have in a partition.

This is the check behind the idempotent append of the exactly-once log sink
(:meth:`Partition.append_once <sluice.log.partition.Partition.append_once>`)
and :meth:`Partition.producer_records
<sluice.log.partition.Partition.producer_records>`: below the offset the
producer-state snapshot covers (:mod:`sluice.log.producer_state`) the
snapshot counts, so records deleted by retention, archived or compacted away
still count; after it, the batch headers of the local segments do. The
callers count under the writer lock and count again if the snapshot changed
meanwhile (:func:`pstate_identity`).
"""

from __future__ import annotations

import bisect
import os
from typing import TYPE_CHECKING

from sluice.log.format import HEADER_SIZE, parse_header
from sluice.log.index import load_offset_index, lookup_position
from sluice.log.segment import HeadState, list_segments
from sluice.log.segment_scan import iter_headers

if TYPE_CHECKING:
    from sluice.log.partition import Partition
    from sluice.log.producer_state import ProducerState


def pstate_identity(partition: Partition) -> tuple[int, int, int] | None:
    """The identity of the partition's producer-state snapshot file (``None`` if
    missing): it changes whenever the snapshot file is replaced."""
    from sluice.log.producer_state import identity

    return identity(partition)


def cached_producer_state(
    partition: Partition,
) -> tuple[ProducerState, tuple[int, int, int] | None]:
    """The producer-state snapshot (cached while its file is unchanged); rebuilt,
    under the cleaner lock, when missing, corrupt or behind the log's start."""
    from sluice.log.producer_state import (
        ProducerStateCorruptError,
        identity,
        read_snapshot,
        refresh,
    )
    from sluice.log.retention import cleaner_lock

    ident = identity(partition)
    cached = partition._pstate_cache
    if ident is not None and cached is not None and cached[1] == ident:
        return cached
    state = None
    if ident is not None:
        try:
            state = read_snapshot(partition)
        except (ProducerStateCorruptError, FileNotFoundError):
            state = None
    if state is None or state.covered > partition.state().active_base:
        with cleaner_lock(partition, wait=True):
            refresh(partition)
            ident = identity(partition)
            state = read_snapshot(partition)
        assert state is not None
    partition._pstate_cache = (state, ident)
    return state, ident


def count_producer_records(
    partition: Partition,
    st: HeadState,
    pstate: ProducerState,
    producer_id: int,
    sequence: int,
    since: int,
) -> int:
    """How many records of ``producer_id`` with base sequence ``sequence`` the
    partition holds at offsets ``>= since``: from ``pstate`` below the offset it
    covers, from the batch headers after it. Raises
    :class:`~sluice.log.producer_state.ProducerStateUnknownError` when neither
    can tell."""
    from sluice.log.producer_state import ProducerStateUnknownError

    known, scan_from = 0, since
    if since < pstate.covered:
        n = pstate.count(producer_id, sequence, since)
        if n is not None:
            known, scan_from = n, pstate.covered
        else:
            bases = list_segments(partition.dir)
            start = bases[0] if bases else st.active_base
            if since < start or partition.config.compact:
                raise ProducerStateUnknownError(
                    f"partition {partition.name} cannot tell how many records of producer "
                    f"{producer_id:#x} with sequence {sequence} it holds from offset "
                    f"{since}: records from there were removed (the log starts at "
                    f"{start}{', compacted' if partition.config.compact else ''}) and the "
                    "producer state no longer knows that producer there (it expired "
                    "after producer_expiration, used more than "
                    f"{_recent_sequences()} sequences since, or the snapshot was lost)"
                )
    return known + scan_producer_records(partition, st, producer_id, sequence, scan_from)


def scan_producer_records(
    partition: Partition, st: HeadState, producer_id: int, sequence: int, since: int
) -> int:
    """Count those records from the batch headers of the local segments, from
    offset ``since`` up to the published end ``st``."""
    if since >= st.next_offset:
        return 0
    bases = list_segments(partition.dir)
    first = max(0, bisect.bisect_right(bases, since) - 1)
    total = 0
    for base in bases[first:]:
        if base > st.active_base:
            break
        try:
            fd = os.open(partition.segment_file(base), os.O_RDONLY)
        except FileNotFoundError:  # deleted meanwhile: the caller sees the new snapshot
            continue
        try:
            end = st.active_end if base == st.active_base else os.fstat(fd).st_size
            pos = 0
            if since > base:
                rel, pos = lookup_position(
                    load_offset_index(partition.segment_file(base, ".index")), since - base
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


def _recent_sequences() -> int:
    from sluice.log.producer_state import RECENT_SEQUENCES

    return RECENT_SEQUENCES


__all__ = [
    "cached_producer_state",
    "count_producer_records",
    "pstate_identity",
    "scan_producer_records",
]
