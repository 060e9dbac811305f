"""Sparse indexes of a segment: offset → file position, and timestamp → offset.

Both are append-only files of fixed-size little-endian entries, written by the
partition's writer every ``index_interval_bytes`` of log (4 KiB by default, as
in Kafka), so a lookup reads a small file and scans at most a few KiB of batch
headers. They are hints: a reader checks that the batch at an indexed position
is what the entry says and falls back to a scan from the segment start if not,
and recovery rebuilds them from the segment.

``.index`` entries are ``(relative offset u32, position u32)``: the batch whose
base offset is ``segment base + relative offset`` starts at ``position``.

``.timeindex`` entries are ``(timestamp i64, relative offset u32)``: every
record *before* that offset has a timestamp <= ``timestamp`` (the running
maximum). So to find the first record with timestamp >= t, start at the last
entry whose timestamp is < t. When a segment is closed, a last entry
``(segment max timestamp, end offset)`` is appended, which also gives the
segment's largest timestamp to time-based retention without a scan.
"""

from __future__ import annotations

import os
import struct

import numpy as np

OFFSET_ENTRY = np.dtype([("rel", "<u4"), ("pos", "<u4")])
TIME_ENTRY = np.dtype([("ts", "<i8"), ("rel", "<u4")])
_OFFSET = struct.Struct("<II")
_TIME = struct.Struct("<qI")


def pack_offset_entry(rel: int, pos: int) -> bytes:
    return _OFFSET.pack(rel, pos)


def pack_time_entry(ts: int, rel: int) -> bytes:
    return _TIME.pack(ts, rel)


def _load(path: str, dtype: np.dtype) -> np.ndarray | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    usable = len(data) - len(data) % dtype.itemsize
    return np.frombuffer(data, dtype=dtype, count=usable // dtype.itemsize)


def load_offset_index(path: str) -> np.ndarray | None:
    """The entries of an offset index (``None`` if the file is missing). Entries that
    break monotonicity (a torn tail after a crash) and what follows are dropped.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "0.index")
    >>> _ = open(p, "wb").write(pack_offset_entry(0, 0) + pack_offset_entry(10, 4096))
    >>> load_offset_index(p)["pos"].tolist()
    [0, 4096]
    """
    e = _load(path, OFFSET_ENTRY)
    if e is None or len(e) < 2:
        return e
    ok = (np.diff(e["rel"].astype(np.int64)) > 0) & (np.diff(e["pos"].astype(np.int64)) > 0)
    if ok.all():
        return e
    return e[: int(np.argmin(ok)) + 1]


def load_time_index(path: str) -> np.ndarray | None:
    """The entries of a time index (``None`` if missing); non-monotonic tails are dropped."""
    e = _load(path, TIME_ENTRY)
    if e is None or len(e) < 2:
        return e
    ok = (np.diff(e["ts"]) >= 0) & (np.diff(e["rel"].astype(np.int64)) >= 0)
    if ok.all():
        return e
    return e[: int(np.argmin(ok)) + 1]


def lookup_position(entries: np.ndarray | None, rel: int) -> tuple[int, int]:
    """``(relative offset, position)`` of the last entry at or before ``rel``
    (``(0, 0)``: scan from the segment start)."""
    if entries is None or len(entries) == 0:
        return 0, 0
    i = int(np.searchsorted(entries["rel"], rel, side="right")) - 1
    if i < 0:
        return 0, 0
    return int(entries["rel"][i]), int(entries["pos"][i])


def lookup_time(entries: np.ndarray | None, ts: int) -> int:
    """Relative offset from which to scan for the first record with timestamp >= ``ts``."""
    if entries is None or len(entries) == 0:
        return 0
    i = int(np.searchsorted(entries["ts"], ts, side="left")) - 1
    return 0 if i < 0 else int(entries["rel"][i])


def write_index_files(
    base_path: str, offset_entries: list[tuple[int, int]], time_entries: list[tuple[int, int]]
) -> None:
    """(Re)write the ``.index`` and ``.timeindex`` of segment ``base_path`` (without
    extension) atomically: temporary files renamed over the old ones."""
    for ext, entries, pack in (
        (".index", offset_entries, pack_offset_entry),
        (".timeindex", time_entries, pack_time_entry),
    ):
        tmp = base_path + ext + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b"".join(pack(a, b) for a, b in entries))
        os.replace(tmp, base_path + ext)


__all__ = [
    "OFFSET_ENTRY",
    "TIME_ENTRY",
    "load_offset_index",
    "load_time_index",
    "lookup_position",
    "lookup_time",
    "pack_offset_entry",
    "pack_time_entry",
    "write_index_files",
]
