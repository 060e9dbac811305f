"""Log compaction: keep the latest record of each key, preserving offsets.

As in Kafka, only closed segments are compacted (the active one is never
touched), a record survives if no later record of the closed segments has the
same key, and a tombstone (null value) is kept for ``delete_retention`` after
its segment's newest timestamp so consumers that are behind still see the
delete, then removed. Offsets never change: a compacted batch keeps its base
offset, its last offset delta (and so its producer sequence range) and stores
the offsets of the records it kept; a consumer reading across a removed record
simply sees the next offset. Batches left empty are dropped, and so are
segments left empty.

The latest offset of each key is found for all closed segments at once with
Polars (``is_last_distinct`` over the key column), so compaction holds the keys
of the closed segments in memory. A segment is rewritten into
``<base>.log.cleaned`` and renamed over the original; readers that have the old
file open keep reading it, new readers see the new one (a stale index entry is
detected and ignored).

Compaction runs when a segment rolls if the share of records it would remove
is at least ``min_cleanable_dirty_ratio`` (Kafka's default 0.5), and on demand
with ``Log.compact(topic)`` / ``compact_partition(..., force=True)``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from sluice.log.errors import CorruptRecordError
from sluice.log.format import HEADER_SIZE, check_crc, decode_records, prepare_batch
from sluice.log.index import write_index_files
from sluice.log.partition import Partition, now_ms, scan_segment
from sluice.log.segment import list_segments, read_batches


def _segment_batches(partition: Partition, base: int) -> list[tuple[Any, pa.Table]]:
    path = partition.segment_file(base)
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            batches, pos2, problem = read_batches(fd, pos, size, 8 << 20)
            for _, h, buf in batches:
                if not check_crc(h, buf):
                    raise CorruptRecordError(path, h.base_offset, "checksum mismatch")
                out.append((h, decode_records(h, buf[HEADER_SIZE:])))
            if problem is not None:
                raise CorruptRecordError(path, base, f"{problem} batch at byte {pos2}")
            if not batches:
                break
            pos = pos2
    finally:
        os.close(fd)
    return out


def compact_partition(
    partition: Partition, *, force: bool = False, now: int | None = None
) -> dict[str, Any]:
    """Compact the closed segments of a partition. The caller holds the cleaner lock.
    Returns counts (``records_before``, ``records_removed``, ``segments_rewritten``)."""
    cfg = partition.config
    st = partition.state()
    closed = [b for b in list_segments(partition.dir) if b < st.active_base]
    if not closed:
        return {"records_before": 0, "records_removed": 0, "segments_rewritten": 0}
    now = now_ms() if now is None else now
    segs = [(b, _segment_batches(partition, b)) for b in closed]
    keys, seg_of, tomb = [], [], []
    for i, (_, batches) in enumerate(segs):
        for _, t in batches:
            keys.append(
                t.column("key").combine_chunks()
                if isinstance(t.column("key"), pa.ChunkedArray)
                else t.column("key")
            )
            seg_of.append(np.full(t.num_rows, i, np.int32))
            tomb.append(np.asarray(t.column("value").is_null()))
    total = sum(len(k) for k in keys)
    if total == 0:
        return {"records_before": 0, "records_removed": 0, "segments_rewritten": 0}
    key_col = pa.chunked_array(keys, pa.binary()) if keys else pa.chunked_array([], pa.binary())
    kdf = pl.DataFrame({"key": pl.Series(key_col)})
    latest = (
        kdf.select(pl.col("key").is_last_distinct() | pl.col("key").is_null())
        .to_series()
        .to_numpy()
    )
    seg_idx = np.concatenate(seg_of)
    is_tomb = np.concatenate(tomb)
    seg_max = np.array([_max_ts(batches) for _, batches in segs], np.int64)
    expired = seg_max[seg_idx] < now - cfg.delete_retention_ms
    keep = latest & ~(is_tomb & expired)
    removed = int(total - keep.sum())
    result = {"records_before": total, "records_removed": removed, "segments_rewritten": 0}
    if removed == 0 or (not force and removed / total < cfg.min_cleanable_dirty_ratio):
        return result
    pos = 0
    for base, batches in segs:
        n = sum(t.num_rows for _, t in batches)
        mask = keep[pos : pos + n]
        pos += n
        if mask.all():
            continue
        _rewrite(partition, base, batches, mask)
        result["segments_rewritten"] += 1
    partition.bump_generation()
    return result


def _max_ts(batches: list[tuple[Any, pa.Table]]) -> int:
    return max((h.max_timestamp for h, _ in batches), default=-(2**63))


def _rewrite(
    partition: Partition, base: int, batches: list[tuple[Any, pa.Table]], mask: np.ndarray
) -> None:
    path = partition.segment_file(base)
    tmp = path + ".cleaned"
    parts: list[bytes] = []
    pos = 0
    for h, t in batches:
        m = mask[pos : pos + t.num_rows]
        pos += t.num_rows
        if not m.any():
            continue
        kept = t.filter(pa.array(m)) if not m.all() else t
        offsets = kept.column("offset").to_numpy()
        b = prepare_batch(
            kept.column("timestamp").to_numpy(),
            kept.column("key").combine_chunks(),
            kept.column("value").combine_chunks(),
            headers=kept.column("headers").to_pylist() if "headers" in kept.column_names else None,
            offset_deltas=offsets - h.base_offset,
            last_offset_delta=h.last_offset_delta,
            codec=h.codec,
            producer_id=h.producer_id,
            producer_epoch=h.producer_epoch,
            base_sequence=h.base_sequence,
        )
        parts.append(b.to_bytes(h.base_offset))
    if not parts:
        for ext in (".log", ".index", ".timeindex"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partition.segment_file(base, ext))
        return
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(p)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    scan = scan_segment(path, base, partition.config.index_interval_bytes, closed=True)
    write_index_files(partition.segment_file(base, ""), scan.offset_entries, scan.time_entries)


__all__ = ["compact_partition"]
