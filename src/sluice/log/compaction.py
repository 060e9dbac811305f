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

**Bounded memory (Kafka's cleaner).** The latest offset of each key is kept in
an :class:`OffsetMap` of fixed size (``compaction_buffer_bytes``, 24 bytes per
key: a 128-bit digest of the key and the offset), never in a table of all the
keys. Compaction runs in passes: a pass reads the *dirty* records (those after
the ``cleaner-offset-checkpoint``, Kafka's file of the same name) into the map
until it is full, then rewrites every closed segment from the log start up to
where the map ends, dropping each record whose key the map holds at a later
offset. The next pass continues where the map stopped (in the middle of a
segment if need be), until the map has covered every closed segment; the
checkpoint then moves to the end of the closed segments, so the next compaction
only maps what was appended since. After all passes a record survives exactly
when no later record of the closed segments has its key, as with an unbounded
map. Memory is the map plus one batch at a time, whatever the number of keys.

Key digests are two 64-bit hashes with seeds drawn at random for each
compaction, so two different keys share a digest with probability about
``2**-128`` per pair (Kafka accepts the same risk with MD5), and keys crafted to
collide cannot be prepared in advance. The key length is compared too.

A segment is rewritten into ``<base>.log.cleaned`` and renamed over the
original; readers that have the old file open keep reading it, new readers see
the new one (a stale index entry is detected and ignored).

Compaction runs when a segment rolls if the share of dirty bytes among the
closed segments is at least ``min_cleanable_dirty_ratio`` (Kafka's default
0.5), and on demand with ``Log.compact(topic)`` / ``compact_partition(...,
force=True)``.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from sluice.errors import ConfigError
from sluice.log.errors import CorruptRecordError
from sluice.log.format import HEADER_SIZE, BatchHeader, check_crc, decode_records, prepare_batch
from sluice.log.index import write_index_files
from sluice.log.partition import Partition, iter_headers, now_ms, scan_segment
from sluice.log.producer_state import refresh as refresh_producer_state
from sluice.log.segment import list_segments, read_batches

#: Bytes of one offset-map entry: two 64-bit key hashes, the key length (32 bits)
#: and the offset (64 bits); Kafka's ``SkimpyOffsetMap`` stores MD5 + offset.
ENTRY_BYTES = 28
_CHECKPOINT = "cleaner-offset-checkpoint"
#: Bytes read from a segment at a time (at least one whole batch).
_READ_CHUNK = 1 << 20
_U64 = np.uint64
_Cols = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # h1, h2, length, offset


class OffsetMap:
    """Kafka's dedupe buffer: key digest → latest offset, for at most
    ``buffer_bytes // ENTRY_BYTES`` keys.

    Entries live in NumPy arrays sorted by digest, so a whole batch of keys is
    looked up with one ``searchsorted``; new keys gather in a small sorted run
    merged into the main one now and then. :meth:`add` takes the records of a
    batch in offset order and returns how many of them fit (all, or the prefix
    whose new keys fit once the map is full). The entries never take more than
    ``buffer_bytes``; a merge briefly needs about as much again.

    >>> import pyarrow as pa
    >>> m = OffsetMap(2 * ENTRY_BYTES, seeds=(1, 2))  # room for two keys
    >>> m.add(pa.array([b"a", b"b", b"a", b"c"]), np.array([0, 1, 2, 3]))
    3
    >>> m.latest(pa.array([b"a", b"b", b"c"])).tolist()
    [2, 1, -1]
    """

    def __init__(self, buffer_bytes: int, *, seeds: tuple[int, int] | None = None) -> None:
        self.capacity = int(buffer_bytes) // ENTRY_BYTES
        if self.capacity < 2:
            raise ConfigError(
                f"compaction_buffer_bytes must hold at least two keys ({2 * ENTRY_BYTES} "
                f"bytes), got {buffer_bytes}"
            )
        self.seeds = seeds or (random.getrandbits(63), random.getrandbits(63))
        self._main: _Cols = _empty()
        self._new: _Cols = _empty()
        self._merge_at = max(1024, self.capacity // 8)

    def __len__(self) -> int:
        return len(self._main[3]) + len(self._new[3])

    def digests(self, keys: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Two 64-bit hashes and the length of each key (nulls: length -1)."""
        k = pl.col("k")
        d = pl.DataFrame(
            {"k": pl.Series(keys if keys.type == pa.binary() else keys.cast(pa.binary()))}
        ).select(
            k.hash(self.seeds[0]).alias("h1"),
            k.hash(self.seeds[1]).alias("h2"),
            k.bin.size().fill_null(-1).cast(pl.Int32).alias("n"),
        )
        return d["h1"].to_numpy(), d["h2"].to_numpy(), d["n"].to_numpy()

    def add(self, keys: pa.Array, offsets: np.ndarray) -> int:
        """Record ``keys`` (no nulls) at ``offsets`` (ascending); returns how many
        records, from the first, fit in the map."""
        n = len(offsets)
        if n == 0:
            return 0
        h1, h2, ln = self.digests(keys)
        off = np.asarray(offsets, np.int64)
        in_main = _find(self._main, h1, h2, ln)
        in_new = _find(self._new, h1, h2, ln)
        known = (in_main >= 0) | (in_new >= 0)
        digest = pl.DataFrame({"a": h1, "b": h2, "c": ln}).select(pl.struct("a", "b", "c"))
        first = digest.select(pl.first().is_first_distinct()).to_series().to_numpy()
        fresh = first & ~known
        room = self.capacity - len(self)
        if int(fresh.sum()) > room:  # full: the prefix whose new keys fit
            n = int(np.searchsorted(np.cumsum(fresh), room, side="right"))
            h1, h2, ln, off = h1[:n], h2[:n], ln[:n], off[:n]
            in_main, in_new, fresh, digest = in_main[:n], in_new[:n], fresh[:n], digest[:n]
        if n == 0:
            return 0
        # each key's last record in the batch carries its latest offset
        last = digest.select(pl.first().is_last_distinct()).to_series().to_numpy()
        for cols, at in ((self._main, in_main), (self._new, in_new)):
            upd = last & (at >= 0)
            cols[3][at[upd]] = off[upd]
        add = np.flatnonzero(last & ~((in_main >= 0) | (in_new >= 0)))
        if len(add):
            self._new = _sorted(_concat([self._new, (h1[add], h2[add], ln[add], off[add])]))
            if len(self._new[3]) >= self._merge_at:
                self._main = _sorted(_concat([self._main, self._new]))
                self._new = _empty()
        return n

    def latest(self, keys: pa.Array) -> np.ndarray:
        """The latest offset of each key in the map (-1: not in the map)."""
        h1, h2, ln = self.digests(keys)
        out = np.full(len(h1), -1, np.int64)
        for cols in (self._main, self._new):
            at = _find(cols, h1, h2, ln)
            hit = at >= 0
            out[hit] = cols[3][at[hit]]
        return out


def _empty() -> _Cols:
    return (np.zeros(0, _U64), np.zeros(0, _U64), np.zeros(0, np.int32), np.zeros(0, np.int64))


def _concat(parts: list[_Cols]) -> _Cols:
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))  # type: ignore[return-value]


def _sorted(cols: _Cols) -> _Cols:
    order = np.lexsort((cols[2], cols[1], cols[0]))
    return tuple(c[order] for c in cols)  # type: ignore[return-value]


def _find(cols: _Cols, h1: np.ndarray, h2: np.ndarray, ln: np.ndarray) -> np.ndarray:
    """Where each digest is in the sorted ``cols`` (-1: absent; nulls are absent)."""
    c1, c2, cl, _ = cols
    out = np.full(len(h1), -1, np.int64)
    if len(c1) == 0:
        return out
    lo = np.searchsorted(c1, h1, side="left")
    hi = np.searchsorted(c1, h1, side="right")
    one = (hi - lo == 1) & (ln >= 0)
    i = lo[one]
    match = (c2[i] == h2[one]) & (cl[i] == ln[one])
    out[np.flatnonzero(one)[match]] = i[match]
    for j in np.flatnonzero((hi - lo > 1) & (ln >= 0)):  # first hashes that collide
        a, b = int(lo[j]), int(hi[j])
        hit = np.flatnonzero((c2[a:b] == h2[j]) & (cl[a:b] == ln[j]))
        if len(hit):
            out[j] = a + int(hit[0])
    return out


def compact_partition(
    partition: Partition,
    *,
    force: bool = False,
    now: int | None = None,
    buffer_bytes: int | None = None,
) -> dict[str, Any]:
    """Compact the closed segments of a partition. The caller holds the cleaner lock.

    ``buffer_bytes`` (default: the topic's ``compaction_buffer_bytes``) bounds the
    offset map; fewer bytes mean more passes, never a different result. Returns
    counts (``records_before``, ``records_removed``, ``segments_rewritten``,
    ``passes``)."""
    cfg = partition.config
    st = partition.state()
    end_closed = st.active_base
    # batches compaction empties must stay known to the idempotent append
    refresh_producer_state(partition, now=now)
    result = {"records_before": 0, "records_removed": 0, "segments_rewritten": 0, "passes": 0}
    closed = [b for b in list_segments(partition.dir) if b < end_closed]
    if not closed:
        return result
    now = now_ms() if now is None else now
    sizes = {b: _file_size(partition.segment_file(b)) for b in closed}
    result["records_before"] = sum(_record_count(partition, b) for b in closed)
    dirty_from = min(max(_read_checkpoint(partition), closed[0]), end_closed)
    dirty = sum(s for b, s in sizes.items() if _segment_end(closed, b, end_closed) > dirty_from)
    total = sum(sizes.values())
    if result["records_before"] == 0:
        return result
    if not force and (total == 0 or dirty / total < cfg.min_cleanable_dirty_ratio):
        return result
    horizon = now - cfg.delete_retention_ms
    expired = {b: partition.segment_max_timestamp(b) < horizon for b in closed}
    budget = cfg.compaction_buffer_bytes if buffer_bytes is None else buffer_bytes
    seeds = (random.getrandbits(63), random.getrandbits(63))
    start = dirty_from
    rewritten: set[int] = set()
    while True:
        omap = OffsetMap(budget, seeds=seeds)
        end = _build_map(partition, closed, start, end_closed, omap)
        for base in closed:
            if base >= end and base > start:
                break
            removed, deleted = _clean_segment(partition, base, end, omap, expired[base])
            if removed:
                result["records_removed"] += removed
                rewritten.add(base)
            if deleted:
                sizes.pop(base)
        closed = [b for b in closed if b in sizes]
        result["passes"] += 1
        del omap
        if end >= end_closed:
            break
        start = end
    result["segments_rewritten"] = len(rewritten)
    _write_checkpoint(partition, end_closed)
    if rewritten:
        partition.bump_generation()
    return result


def _build_map(
    partition: Partition, closed: list[int], start: int, end_closed: int, omap: OffsetMap
) -> int:
    """Fill ``omap`` with the keys of the records from offset ``start`` on; returns the
    offset where it stopped (``end_closed`` if everything fit)."""
    for base in closed:
        if _segment_end(closed, base, end_closed) <= start:
            continue
        for h, t in _batches(partition, base):
            if h.next_offset <= start:
                continue
            offs = t.column("offset").to_numpy()
            keys = _column(t, "key")
            sel = (offs >= start) & np.asarray(keys.is_valid())
            if not sel.all():
                idx = np.flatnonzero(sel)
                offs, keys = offs[idx], keys.take(pa.array(idx))
            took = omap.add(keys, offs)
            if took < len(offs):
                return int(offs[took])
    return end_closed


def _clean_segment(
    partition: Partition, base: int, end: int, omap: OffsetMap, expired: bool
) -> tuple[int, bool]:
    """Rewrite segment ``base`` without the records below ``end`` that ``omap`` shows
    superseded (and expired tombstones). Returns the number of records removed (0:
    the segment is untouched) and whether the segment was left empty and deleted."""
    path = partition.segment_file(base)
    tmp = path + ".cleaned"
    removed = kept = 0
    out = None
    try:
        for h, t, raw in _batches(partition, base, with_bytes=True):
            offs = t.column("offset").to_numpy()
            covered = offs < end
            keep = np.ones(len(offs), bool)
            if covered.any():
                keys = _column(t, "key")
                latest = omap.latest(keys)
                superseded = covered & (latest > offs)
                tomb = covered & np.asarray(_column(t, "value").is_null()) & expired
                keep = ~(superseded | tomb)
            n_keep = int(keep.sum())
            removed += len(offs) - n_keep
            kept += n_keep
            if out is None:
                if n_keep == len(offs):
                    continue  # nothing removed yet: no need to copy until something is
                out = _open_rewrite(partition, base, tmp, h.base_offset)
            if n_keep == len(offs):
                out.write(raw)
            elif n_keep:
                out.write(_filtered_batch(h, t, keep))
        if out is None:
            return 0, False
        out.flush()
        os.fsync(out.fileno())
        out.close()
        out = None
        if kept == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            for ext in (".log", ".index", ".timeindex"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(partition.segment_file(base, ext))
            return removed, True
        os.replace(tmp, path)
    finally:
        if out is not None:
            out.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    scan = scan_segment(
        path, base, partition.config.index_interval_bytes, closed=True, chunk=_READ_CHUNK
    )
    write_index_files(partition.segment_file(base, ""), scan.offset_entries, scan.time_entries)
    return removed, False


def _open_rewrite(partition: Partition, base: int, tmp: str, upto: int) -> Any:
    """Start ``tmp`` with the batches of segment ``base`` before offset ``upto``
    (kept unchanged: they were read and nothing was removed from them)."""
    out = open(tmp, "wb")  # noqa: SIM115 - closed by _clean_segment
    fd = os.open(partition.segment_file(base), os.O_RDONLY)
    try:
        pos = 0
        for h in iter_headers(fd, 0, os.fstat(fd).st_size):
            if h.base_offset >= upto:
                break
            out.write(os.pread(fd, h.length, pos))
            pos += h.length
    finally:
        os.close(fd)
    return out


def _filtered_batch(h: BatchHeader, t: pa.Table, keep: np.ndarray) -> bytes:
    kept = t.filter(pa.array(keep))
    offsets = kept.column("offset").to_numpy()
    b = prepare_batch(
        kept.column("timestamp").to_numpy(),
        _column(kept, "key"),
        _column(kept, "value"),
        headers=kept.column("headers").to_pylist() if "headers" in kept.column_names else None,
        offset_deltas=offsets - h.base_offset,
        last_offset_delta=h.last_offset_delta,
        codec=h.codec,
        producer_id=h.producer_id,
        producer_epoch=h.producer_epoch,
        base_sequence=h.base_sequence,
    )
    return b.to_bytes(h.base_offset)


def _batches(partition: Partition, base: int, *, with_bytes: bool = False) -> Iterator[Any]:
    """The batches of a closed segment, decoded, read about 1 MiB at a time."""
    path = partition.segment_file(base)
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            batches, pos2, problem = read_batches(fd, pos, size, _READ_CHUNK)
            for _, h, buf in batches:
                if not check_crc(h, buf):
                    raise CorruptRecordError(path, h.base_offset, "checksum mismatch")
                t = decode_records(h, buf[HEADER_SIZE:])
                yield (h, t, buf) if with_bytes else (h, t)
            if problem is not None:
                raise CorruptRecordError(path, base, f"{problem} batch at byte {pos2}")
            if not batches:
                break
            pos = pos2
    finally:
        os.close(fd)


def _column(t: pa.Table, name: str) -> pa.Array:
    c = t.column(name)
    return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c


def _segment_end(closed: list[int], base: int, end_closed: int) -> int:
    i = closed.index(base)
    return closed[i + 1] if i + 1 < len(closed) else end_closed


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _record_count(partition: Partition, base: int) -> int:
    try:
        fd = os.open(partition.segment_file(base), os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        return sum(h.record_count for h in iter_headers(fd, 0, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def _read_checkpoint(partition: Partition) -> int:
    try:
        with open(os.path.join(partition.dir, _CHECKPOINT)) as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _write_checkpoint(partition: Partition, offset: int) -> None:
    """Where the next compaction starts mapping keys (a hint: if lost, the next
    compaction maps from the log start, which is slower but gives the same result)."""
    path = os.path.join(partition.dir, _CHECKPOINT)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(offset))
    os.replace(tmp, path)


__all__ = ["ENTRY_BYTES", "OffsetMap", "compact_partition"]
