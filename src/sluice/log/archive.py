"""Tiered storage: closed segments copied to Parquet, still readable by offset.

With ``archive=True`` on a topic, each closed segment is written (once) as a
Parquet file ``<data dir>/archive/<topic>/<partition>/<base>-<end>.parquet``
with the columns ``offset``, ``timestamp``, ``key``, ``value`` (and
``headers``), zstd-compressed, with page checksums and the offset range and
largest timestamp in its metadata. The file is written under a temporary name
and renamed when complete. Local segments that are archived may then be deleted
by the local retention (``local_retention``/``local_retention_bytes``) while
consumers keep reading them by offset, from Parquet (row groups are skipped by
their offset statistics); the topic's ``retention`` bounds the archive.

The archive is plain Parquet: any tool (Polars, DuckDB, Spark) can query it.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sluice.log.errors import CorruptRecordError
from sluice.log.format import HEADER_SIZE, check_crc, decode_records
from sluice.log.partition import Partition
from sluice.log.segment import read_batches

_FILE = re.compile(r"^(\d{20})-(\d{20})\.parquet$")
_ROW_GROUP = 65_536


def archive_dir(partition: Partition) -> str:
    """``<data dir>/archive/<topic>/<partition>`` of a partition directory."""
    data_dir = os.path.dirname(os.path.dirname(os.path.dirname(partition.dir)))
    return os.path.join(data_dir, "archive", partition.topic, str(partition.index))


def archived_files(partition: Partition) -> list[tuple[int, int, str]]:
    """``(first offset, end offset, path)`` of the archived segments, by offset."""
    d = archive_dir(partition)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        m = _FILE.match(n)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), os.path.join(d, n)))
    return sorted(out)


def archived_range(partition: Partition) -> tuple[int, int]:
    """``[start, end)`` offsets covered by the archive (``(0, 0)`` if none)."""
    files = archived_files(partition)
    if not files:
        return 0, 0
    return files[0][0], files[-1][1]


def archived_end(partition: Partition) -> int:
    return archived_range(partition)[1]


def segment_table(partition: Partition, base: int, end: int | None = None) -> pa.Table:
    """All records of a closed segment as one Arrow table (checksums verified)."""
    path = partition.segment_file(base)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size if end is None else end
        pos, tables = 0, []
        while pos < size:
            batches, pos2, problem = read_batches(fd, pos, size, 8 << 20)
            for _, h, buf in batches:
                if not check_crc(h, buf):
                    raise CorruptRecordError(path, h.base_offset, "checksum mismatch")
                tables.append(decode_records(h, buf[HEADER_SIZE:]))
            if problem is not None:
                raise CorruptRecordError(path, base, f"{problem} batch at byte {pos2}")
            if not batches:
                break
            pos = pos2
    finally:
        os.close(fd)
    if not tables:
        return pa.table(
            {
                "offset": pa.array([], pa.int64()),
                "timestamp": pa.array([], pa.int64()),
                "key": pa.array([], pa.binary()),
                "value": pa.array([], pa.binary()),
            }
        )
    return pa.concat_tables(tables, promote_options="default")


def archive_segment(partition: Partition, base: int, next_base: int) -> str | None:
    """Write closed segment ``base`` (offsets up to ``next_base``) to Parquet; returns
    the file (``None`` if it was archived already)."""
    d = archive_dir(partition)
    final = os.path.join(d, f"{base:020d}-{next_base:020d}.parquet")
    if os.path.exists(final):
        return None
    table = segment_table(partition, base)
    max_ts = int(pc.max(table.column("timestamp")).as_py()) if table.num_rows else -1
    meta = {
        b"sluice.topic": partition.topic.encode(),
        b"sluice.partition": str(partition.index).encode(),
        b"sluice.base_offset": str(base).encode(),
        b"sluice.end_offset": str(next_base).encode(),
        b"sluice.max_timestamp": str(max_ts).encode(),
    }
    table = table.replace_schema_metadata(meta)
    os.makedirs(d, exist_ok=True)
    tmp = final + ".tmp"
    pq.write_table(
        table,
        tmp,
        compression="zstd",
        row_group_size=_ROW_GROUP,
        write_page_checksum=True,
    )
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def _max_ts(path: str) -> int:
    md = pq.read_metadata(path).metadata or {}
    return int(md.get(b"sluice.max_timestamp", b"-1"))


def archive_max_timestamp(path: str) -> int:
    """The newest record timestamp of an archived segment (from its metadata)."""
    return _max_ts(path)


def read_archive(partition: Partition, offset: int, max_records: int) -> pa.Table | None:
    """Up to ``max_records`` archived records from ``offset`` on (within one file)."""
    for first, end, path in archived_files(partition):
        if first <= offset < end or offset < first:
            pf = pq.ParquetFile(path, page_checksum_verification=True)
            out: list[pa.Table] = []
            rows = 0
            for rg in range(pf.num_row_groups):
                stats = pf.metadata.row_group(rg).column(0).statistics
                if stats is not None and stats.has_min_max and stats.max < offset:
                    continue
                t = pf.read_row_group(rg)
                t = t.filter(pc.greater_equal(t.column("offset"), offset))
                if t.num_rows:
                    out.append(t.slice(0, max_records - rows))
                    rows += out[-1].num_rows
                if rows >= max_records:
                    break
            if out:
                return pa.concat_tables(out).replace_schema_metadata(None)
    return None


def archive_offset_for_time(partition: Partition, ts: int) -> int | None:
    """First archived offset with timestamp >= ``ts`` (``None``: not in the archive)."""
    for _, _, path in archived_files(partition):
        if _max_ts(path) < ts:
            continue
        t = pq.read_table(path, columns=["offset", "timestamp"])
        hit = pc.index(pc.greater_equal(t.column("timestamp"), ts), True).as_py()
        if hit >= 0:
            return int(t.column("offset")[hit].as_py())
    return None


def delete_archived(paths: list[str]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def archive_info(partition: Partition) -> dict[str, Any]:
    files = archived_files(partition)
    return {
        "files": len(files),
        "bytes": sum(os.path.getsize(p) for _, _, p in files),
        "range": archived_range(partition),
    }


__all__ = [
    "archive_dir",
    "archive_offset_for_time",
    "archive_segment",
    "archived_files",
    "archived_range",
    "read_archive",
    "segment_table",
]
