"""Reading a partition: a cursor by offset, lookups by timestamp.

A :class:`PartitionReader` keeps an open segment file and a byte position, so
sequential reads do no index lookup and a tailing reader that is up to date
costs one read of the shared head per poll. Every batch's checksum is verified
before its records are returned; a mismatch raises
:class:`~sluice.log.errors.CorruptRecordError` naming the segment file and the
batch's offset. Records are returned as Arrow tables (``offset``,
``timestamp``, ``key``, ``value`` and, if any, ``headers``), decoded batch by
batch without a Python loop per record. Offsets below the first local segment
are read from the Parquet archive when the topic archives.
"""

from __future__ import annotations

import bisect
import os

import pyarrow as pa
import pyarrow.compute as pc

from sluice.log.errors import CorruptRecordError, OffsetOutOfRangeError
from sluice.log.format import HEADER_SIZE, check_crc, decode_records, parse_header
from sluice.log.index import load_offset_index, load_time_index, lookup_position, lookup_time
from sluice.log.partition import Partition
from sluice.log.segment import HeadState, read_batches

_ARCHIVE = -1


class PartitionReader:
    """A read cursor on one partition.

    >>> import tempfile
    >>> from sluice.log import Log
    >>> log = Log(tempfile.mkdtemp())
    >>> log.create_topic("t")
    >>> with log.producer() as p:
    ...     _ = p.send("t", b"hello", key=b"k")
    >>> r = PartitionReader(log.partition("t", 0), 0)
    >>> r.read().column("value").to_pylist()
    [b'hello']
    >>> r.read() is None, r.offset
    (True, 1)
    """

    def __init__(self, partition: Partition, offset: int = 0) -> None:
        self.partition = partition
        self.offset = offset
        self._base: int | None = None
        self._fd: int | None = None
        self._pos = 0
        self._closed_end: int | None = None

    def seek(self, offset: int) -> None:
        """Continue reading at ``offset``."""
        self.offset = offset
        self._drop()

    def _drop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._base = None
        self._closed_end = None

    def close(self) -> None:
        self._drop()

    def available(self) -> bool:
        """Whether records at or after the cursor have been published."""
        return self.offset < self.partition.high_watermark()

    def _locate(self) -> None:
        p = self.partition
        for _attempt in range(2):
            bases = p.segments()
            if not bases or self.offset < bases[0]:
                from sluice.log.archive import archived_range

                start, end = archived_range(p)
                if start <= self.offset < end:
                    self._base = _ARCHIVE
                    return
                first = min(start, bases[0]) if bases and start < end else bases[0] if bases else 0
                if self.offset < first:
                    raise OffsetOutOfRangeError(
                        f"offset {self.offset} of partition {p.name} was deleted by retention; "
                        f"the log starts at {first}"
                    )
                if not bases:
                    p.refresh()
                    continue
            i = bisect.bisect_right(bases, self.offset) - 1
            base = bases[i]
            try:
                fd = os.open(p.segment_file(base), os.O_RDONLY)
            except FileNotFoundError:  # deleted by retention meanwhile
                p.refresh()
                continue
            self._fd, self._base, self._closed_end = fd, base, None
            rel, pos = lookup_position(
                load_offset_index(p.segment_file(base, ".index")), self.offset - base
            )
            if pos:
                h = parse_header(os.pread(fd, HEADER_SIZE, pos))
                if h is None or h.base_offset != base + rel:
                    pos = 0  # a stale index (the segment was rewritten): scan
            self._pos = pos
            return
        raise OffsetOutOfRangeError(f"offset {self.offset} of partition {p.name} is not available")

    def _next_segment(self, st: HeadState) -> bool:
        """Move to the segment after the current one; False if there is none yet."""
        assert self._base is not None
        bases = self.partition.segments()
        i = bisect.bisect_right(bases, self._base)
        if i >= len(bases):
            self.partition.refresh()
            bases = self.partition.segments()
            i = bisect.bisect_right(bases, self._base)
            if i >= len(bases):
                return False
        nxt = bases[i]
        self._drop()
        self.offset = max(self.offset, nxt)  # records between were compacted away
        self._locate()
        return True

    def read(self, max_bytes: int = 1 << 20, max_records: int | None = None) -> pa.Table | None:
        """The next records (about ``max_bytes`` of batches, at most ``max_records``),
        or ``None`` if none are published after the cursor yet."""
        st = self.partition.state()
        if self.offset >= st.next_offset:
            return None
        tables: list[pa.Table] = []
        total = rows = 0
        limit = max_records if max_records is not None else 1 << 62
        while self.offset < st.next_offset and total < max_bytes and rows < limit:
            if self._base is None:
                self._locate()
            if self._base == _ARCHIVE:
                from sluice.log.archive import read_archive

                t = read_archive(self.partition, self.offset, min(limit - rows, 65_536))
                self._drop()
                if t is None or t.num_rows == 0:
                    bases = self.partition.segments()
                    if not bases or bases[0] <= self.offset:
                        break
                    self.offset = bases[0]
                    continue
                tables.append(t)
                rows += t.num_rows
                total += t.nbytes
                self.offset = int(t.column("offset")[-1].as_py()) + 1
                continue
            assert self._fd is not None and self._base is not None
            if self._base == st.active_base:
                end = st.active_end
            else:
                if self._closed_end is None:
                    self._closed_end = os.fstat(self._fd).st_size
                end = self._closed_end
            if self._pos >= end:
                if self._base == st.active_base or not self._next_segment(st):
                    break
                continue
            batches, npos, problem = read_batches(self._fd, self._pos, end, max_bytes - total)
            path = self.partition.segment_file(self._base)
            for bpos, h, buf in batches:
                if not check_crc(h, buf):
                    raise CorruptRecordError(path, h.base_offset, "checksum mismatch")
                if h.next_offset <= self.offset:
                    self._pos = bpos + h.length
                    continue
                try:
                    t = decode_records(h, buf[HEADER_SIZE:])
                except Exception as e:
                    raise CorruptRecordError(path, h.base_offset, f"cannot decode: {e}") from e
                if h.base_offset < self.offset:
                    t = t.filter(pc.greater_equal(t.column("offset"), self.offset))
                if rows + t.num_rows > limit:
                    t = t.slice(0, limit - rows)
                    tables.append(t)
                    rows += t.num_rows
                    self.offset = int(t.column("offset")[-1].as_py()) + 1
                    self._pos = bpos
                    return _concat(tables)
                tables.append(t)
                rows += t.num_rows
                total += h.length
                self.offset = h.next_offset
                self._pos = bpos + h.length
            if problem is not None:
                raise CorruptRecordError(
                    path,
                    self.offset,
                    f"{'incomplete' if problem == 'torn' else 'malformed'} "
                    f"batch at byte {npos} of a published segment",
                )
            if not batches:
                break
        return _concat(tables) if tables else None


def _concat(tables: list[pa.Table]) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    if any("headers" in t.column_names for t in tables):
        return pa.concat_tables(tables, promote_options="default")
    return pa.concat_tables(tables)


def offset_for_time(partition: Partition, ts: int) -> int | None:
    """The first offset whose record has timestamp >= ``ts`` (``None``: no such record
    yet; Kafka's ``offsetsForTimes``). Uses the time indexes; decodes one batch."""
    from sluice.log.archive import archive_offset_for_time

    found = archive_offset_for_time(partition, ts)
    if found is not None:
        return found
    st = partition.state()
    for base in partition.segments():
        if partition.segment_max_timestamp(base) < ts:
            continue
        rel = lookup_time(load_time_index(partition.segment_file(base, ".timeindex")), ts)
        try:
            fd = os.open(partition.segment_file(base), os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            _, pos = lookup_position(load_offset_index(partition.segment_file(base, ".index")), rel)
            if pos:
                h = parse_header(os.pread(fd, HEADER_SIZE, pos))
                if h is None or h.base_offset > base + rel:
                    pos = 0
            end = st.active_end if base == st.active_base else os.fstat(fd).st_size
            while pos < end:
                batches, npos, problem = read_batches(fd, pos, end, 1 << 20)
                for _, h, buf in batches:
                    if h.max_timestamp >= ts:
                        if not check_crc(h, buf):
                            raise CorruptRecordError(
                                partition.segment_file(base), h.base_offset, "checksum mismatch"
                            )
                        t = decode_records(h, buf[HEADER_SIZE:])
                        hit = pc.index(pc.greater_equal(t.column("timestamp"), ts), True).as_py()
                        return int(t.column("offset")[hit].as_py())
                if problem is not None or not batches:
                    break
                pos = npos
        finally:
            os.close(fd)
    return None


__all__ = ["PartitionReader", "offset_for_time"]
