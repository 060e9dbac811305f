"""Segment files and the partition's shared head.

A partition directory holds segments named after their base offset, as in
Kafka (``00000000000000000000.log`` with its ``.index`` and ``.timeindex``),
plus:

``head``
    A 128-byte file mapped into memory by every writer and reader of the
    partition (a seqlock protects it). It publishes the high watermark (the next
    offset: readers read below it only), the active segment and its committed
    size, and a generation number bumped when segments appear or disappear, so
    a tailing reader learns of new data with one memory read and no system call.
    It is a cache: it is trusted only while the machine has not rebooted since it
    was written (it records the kernel's boot id), and recovery rebuilds it.
``.lock``
    The writer lock (``flock``), taken for each append so that any number of
    processes may produce to a partition without interleaving bytes.
``.cleaner.lock``
    Taken by retention, compaction and archiving.
``recovery-point``
    The offset below which the log was fsync'd (written when a segment rolls):
    recovery after a crash of the machine re-validates the segments from there.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

from sluice.log.format import HEADER_SIZE, BatchHeader, parse_header

_SEGMENT = re.compile(r"^(\d{20})\.log$")
HEAD_SIZE = 128
_HEAD_MAGIC = b"SLHD\x01\x00\x00\x00"
_HEAD_FIELDS = struct.Struct("<qqqqqqq16sq")  # after magic (8) and seq (8)
_SEQ = struct.Struct("<Q")
MIN_TS = -(2**63)


def segment_name(base: int) -> str:
    return f"{base:020d}"


def segment_path(directory: str, base: int, ext: str = ".log") -> str:
    return os.path.join(directory, segment_name(base) + ext)


def list_segments(directory: str) -> list[int]:
    """Base offsets of the segments in ``directory``, ascending."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _SEGMENT.match(n)))


def _boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return bytes.fromhex(f.read().strip().replace("-", ""))[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        return b"\0" * 16  # unknown: the head is never trusted across opens


BOOT_ID = _boot_id()


@dataclass(slots=True)
class HeadState:
    """What the head publishes."""

    next_offset: int = 0
    active_base: int = 0
    active_end: int = 0
    active_created_ms: int = 0
    active_max_ts: int = MIN_TS
    last_index_pos: int = 0
    generation: int = 0
    boot_id: bytes = b"\0" * 16
    writer: int = 0

    def pack(self) -> bytes:
        return _HEAD_FIELDS.pack(
            self.next_offset,
            self.active_base,
            self.active_end,
            self.active_created_ms,
            self.active_max_ts,
            self.last_index_pos,
            self.generation,
            self.boot_id,
            self.writer,
        )


class Head:
    """The memory-mapped ``head`` file of a partition."""

    def __init__(self, path: str, *, create: bool = False) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, 0o644)
        try:
            if os.fstat(fd).st_size < HEAD_SIZE:
                if not create:
                    raise FileNotFoundError(path)
                os.ftruncate(fd, HEAD_SIZE)
            self._mm = mmap.mmap(fd, HEAD_SIZE)
        finally:
            os.close(fd)

    def valid(self) -> bool:
        return self._mm[:8] == _HEAD_MAGIC

    def read(self, spins: int = 100_000) -> HeadState | None:
        """A consistent snapshot, or ``None`` if a write stays half done (its writer
        died in the middle: the next writer repairs the head)."""
        mm = self._mm
        for _ in range(spins):
            (s1,) = _SEQ.unpack_from(mm, 8)
            if s1 & 1:
                continue
            fields = _HEAD_FIELDS.unpack_from(mm, 16)
            (s2,) = _SEQ.unpack_from(mm, 8)
            if s1 == s2:
                return HeadState(*fields)
        return None

    def write(self, state: HeadState) -> None:
        """Publish ``state``; the caller holds the writer lock."""
        mm = self._mm
        (seq,) = _SEQ.unpack_from(mm, 8)
        seq += 1 if not seq & 1 else 0
        _SEQ.pack_into(mm, 8, seq)
        mm[16 : 16 + _HEAD_FIELDS.size] = state.pack()
        mm[:8] = _HEAD_MAGIC
        _SEQ.pack_into(mm, 8, seq + 1)

    def close(self) -> None:
        self._mm.close()


def read_batches(
    fd: int, pos: int, end: int, max_bytes: int
) -> tuple[list[tuple[int, BatchHeader, Any]], int, str | None]:
    """Read whole batches from ``pos`` up to ``end`` (at least one, then up to about
    ``max_bytes``). Returns ``(batches, next position, problem)`` where each batch
    is ``(position, header, bytes of the whole batch)`` and ``problem`` is ``None``,
    ``"torn"`` (a batch runs past ``end`` or the file end) or ``"header"`` (not a
    batch header). Checksums are not verified here.
    """
    out: list[tuple[int, BatchHeader, Any]] = []
    buf: bytes = b""
    bstart = pos
    total = 0
    while pos < end and (total < max_bytes or not out):
        if pos + HEADER_SIZE > end:
            return out, pos, "torn"
        if pos + HEADER_SIZE > bstart + len(buf):
            buf = os.pread(fd, max(min(end - pos, max_bytes - total), HEADER_SIZE), pos)
            bstart = pos
            if len(buf) < HEADER_SIZE:
                return out, pos, "torn"
        h = parse_header(buf, pos - bstart)
        if h is None:
            return out, pos, "header"
        if pos + h.length > end:
            return out, pos, "torn"
        if pos + h.length > bstart + len(buf):
            if out and total + h.length > max_bytes:
                break
            buf = os.pread(fd, max(h.length, min(end - pos, max_bytes - total)), pos)
            bstart = pos
            if len(buf) < h.length:
                return out, pos, "torn"
        rel = pos - bstart
        out.append((pos, h, memoryview(buf)[rel : rel + h.length]))
        total += h.length
        pos += h.length
    return out, pos, None


__all__ = [
    "BOOT_ID",
    "HEAD_SIZE",
    "MIN_TS",
    "Head",
    "HeadState",
    "list_segments",
    "read_batches",
    "segment_name",
    "segment_path",
]
