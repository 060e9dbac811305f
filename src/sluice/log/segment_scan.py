"""Reading a segment file from its start: the verified scan and the header walk.

:func:`scan_segment` reads every batch of a segment, verifies checksums and
offset order, and computes the segment's offset and time index entries; it
stops at the first torn, malformed or corrupt batch. Recovery
(:mod:`sluice.log.recovery`) truncates there; compaction re-indexes with it.

:func:`iter_headers` walks only the batch headers of published batches (no
payload reads, no checksum checks), for counting a producer's records.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from sluice.log.format import HEADER_SIZE, BatchHeader, check_crc, parse_header
from sluice.log.segment import MIN_TS, read_batches

_SCAN_CHUNK = 8 << 20
#: Relative offsets in the index are 32-bit: a segment rolls before exceeding this span.
MAX_SEGMENT_SPAN = 2**31 - 1


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
                if h.base_offset < prev_next or h.last_offset - base > MAX_SEGMENT_SPAN:
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


__all__ = ["MAX_SEGMENT_SPAN", "SegmentScan", "iter_headers", "scan_segment"]
