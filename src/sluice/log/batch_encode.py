"""Encoding records as a record batch, checksummed before its base offset is known.

A :class:`PreparedBatch` holds the payload and its CRC; the partition assigns the
offset under its lock and calls :meth:`PreparedBatch.header` to finish the batch.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from crc32c import crc32c

from sluice.log.batch_layout import (
    _CRC_FROM,
    _I32,
    _I64,
    CODEC_NONE,
    FLAG_HEADERS,
    FLAG_NO_KEYS,
    FLAG_SPARSE,
    FLAG_TRANSACTIONAL,
    FLAG_TS64,
    FLAG_TS_CONST,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    VERSION,
)
from sluice.log.binary_columns import binary_parts
from sluice.log.compression import compress


@dataclass(slots=True)
class PreparedBatch:
    """A batch encoded and checksummed except for its offset (assigned under the lock)."""

    payload: list[Any]  # buffers, written with one pwritev (no copy when uncompressed)
    payload_len: int
    payload_crc: int
    flags: int
    codec: int
    last_offset_delta: int
    record_count: int
    base_timestamp: int
    max_timestamp: int
    payload_size: int
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1

    @property
    def size(self) -> int:
        return HEADER_SIZE + self.payload_len

    def to_bytes(self, base_offset: int) -> bytes:
        """The whole batch (header and payload) for ``base_offset``."""
        return b"".join([self.header(base_offset), *self.payload])

    def header(self, base_offset: int) -> bytes:
        """The header for ``base_offset``, checksum included."""
        buf = bytearray(
            HEADER.pack(
                MAGIC,
                self.size,
                0,
                VERSION,
                self.flags,
                self.codec,
                0,
                base_offset,
                self.last_offset_delta,
                self.record_count,
                self.base_timestamp,
                self.max_timestamp,
                self.producer_id,
                self.producer_epoch,
                0,
                self.base_sequence,
                self.payload_size,
            )
        )
        crc = crc32c(memoryview(buf)[_CRC_FROM:], self.payload_crc)
        struct.pack_into("<I", buf, 8, crc)
        return bytes(buf)


def encode_headers(headers: list[Any]) -> tuple[np.ndarray, bytes]:
    """Per-record header blobs (the slow path: a Python loop over records)."""
    parts: list[bytes] = []
    lengths = np.zeros(len(headers), _I32)
    for i, hs in enumerate(headers):
        if hs is None:
            lengths[i] = -1
            continue
        items = list(hs.items()) if isinstance(hs, dict) else list(hs)
        blob = [struct.pack("<H", len(items))]
        for item in items:
            k, v = (item["key"], item["value"]) if isinstance(item, dict) else item
            kb = k.encode() if isinstance(k, str) else bytes(k)
            blob.append(struct.pack("<H", len(kb)) + kb)
            if v is None:
                blob.append(struct.pack("<i", -1))
            else:
                vb = v.encode() if isinstance(v, str) else bytes(v)
                blob.append(struct.pack("<i", len(vb)) + vb)
        b = b"".join(blob)
        lengths[i] = len(b)
        parts.append(b)
    return lengths, b"".join(parts)


def prepare_batch(
    timestamps: np.ndarray | int,
    keys: pa.Array | None,
    values: pa.Array,
    *,
    headers: list[Any] | None = None,
    offset_deltas: np.ndarray | None = None,
    last_offset_delta: int | None = None,
    codec: int = CODEC_NONE,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    transactional: bool = False,
) -> PreparedBatch:
    """Encode records (columns of equal length, at least one record) as a batch payload.
    ``timestamps`` may be one integer for all records, ``keys`` ``None`` for no keys.

    >>> import numpy as np, pyarrow as pa
    >>> b = prepare_batch(np.array([5, 7]), pa.array([b"k", None]), pa.array([b"v1", b"v2"]))
    >>> b.record_count, b.base_timestamp, b.max_timestamp
    (2, 5, 7)
    """
    n = len(values)
    if n == 0 or (keys is not None and len(keys) != n):
        raise ValueError("a batch needs at least one record and columns of equal length")
    if keys is not None and keys.null_count == n:
        keys = None
    klen, kdata = binary_parts(keys) if keys is not None else (None, b"")
    vlen, vdata = binary_parts(values)
    return encode_batch(
        timestamps,
        klen,
        kdata,
        vlen,
        vdata,
        headers=headers,
        offset_deltas=offset_deltas,
        last_offset_delta=last_offset_delta,
        codec=codec,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        transactional=transactional,
    )


def encode_batch(
    timestamps: np.ndarray | int,
    klen: np.ndarray | None,
    kdata: Any,
    vlen: np.ndarray,
    vdata: Any,
    *,
    headers: list[Any] | None = None,
    offset_deltas: np.ndarray | None = None,
    last_offset_delta: int | None = None,
    codec: int = CODEC_NONE,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    transactional: bool = False,
) -> PreparedBatch:
    """:func:`prepare_batch` from columns already split by :func:`binary_parts`
    (``klen`` ``None``: no keys): the producer's fast path, which computed the
    lengths once to check record sizes and reuses them here.

    >>> import numpy as np
    >>> b = encode_batch(9, None, b"", np.array([2, 3], np.int32), b"v1v22")
    >>> b.record_count, b.flags & FLAG_TS_CONST != 0, b.payload_size
    (2, True, 13)
    """
    n = len(vlen)
    if n == 0 or (klen is not None and len(klen) != n):
        raise ValueError("a batch needs at least one record and columns of equal length")
    flags = 0
    parts: list[Any] = []
    if offset_deltas is not None:
        flags |= FLAG_SPARSE
        deltas = np.asarray(offset_deltas, dtype=_I32)
        parts.append(deltas)
        last = int(deltas[-1]) if last_offset_delta is None else last_offset_delta
    else:
        last = n - 1 if last_offset_delta is None else last_offset_delta
    if isinstance(timestamps, int | np.integer):
        base_ts = max_ts = int(timestamps)
        flags |= FLAG_TS_CONST
    else:
        if len(timestamps) != n:
            raise ValueError("a batch needs at least one record and columns of equal length")
        ts = np.asarray(timestamps, dtype=_I64)
        base_ts = int(ts.min())
        max_ts = int(ts.max())
        if max_ts == base_ts:
            flags |= FLAG_TS_CONST
        elif max_ts - base_ts < 2**31:
            parts.append((ts - base_ts).astype(_I32))
        else:
            flags |= FLAG_TS64
            parts.append(ts - base_ts)
    if klen is None:
        flags |= FLAG_NO_KEYS
        kdata = b""
    else:
        parts.append(klen)
    parts.append(vlen)
    hdata: Any = b""
    if headers is not None and any(h for h in headers):
        flags |= FLAG_HEADERS
        hlen, hdata = encode_headers(headers)
        parts.append(hlen)
    if transactional:
        flags |= FLAG_TRANSACTIONAL
    parts += [kdata, vdata, hdata]
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    raw_len = sum(len(v) for v in views)
    if codec == CODEC_NONE:
        payload = views
        crc = 0
        for v in views:
            crc = crc32c(v, crc)
    else:
        payload = [compress(codec, b"".join(views))]
        crc = crc32c(payload[0])
    return PreparedBatch(
        payload=payload,
        payload_len=raw_len if codec == CODEC_NONE else len(payload[0]),
        payload_crc=crc,
        flags=flags,
        codec=codec,
        last_offset_delta=last,
        record_count=n,
        base_timestamp=base_ts,
        max_timestamp=max_ts,
        payload_size=raw_len,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
    )


def prepare_record(
    timestamp: int,
    key: bytes | None,
    value: bytes | None,
    *,
    codec: int = CODEC_NONE,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> PreparedBatch:
    """A batch of one record, built without NumPy (the single-record fast path).

    >>> b = prepare_record(5, b"k", b"v")
    >>> (b.record_count, b.payload_len)
    (1, 10)
    """
    vlen = -1 if value is None else len(value)
    flags = FLAG_TS_CONST
    if key is None:
        flags |= FLAG_NO_KEYS
        raw = _I32S.pack(vlen) + (value or b"")
    else:
        raw = _TWO.pack(len(key), vlen) + key + (value or b"")
    payload = raw if codec == CODEC_NONE else compress(codec, raw)
    return PreparedBatch(
        payload=[payload],
        payload_len=len(payload),
        payload_crc=crc32c(payload),
        flags=flags,
        codec=codec,
        last_offset_delta=0,
        record_count=1,
        base_timestamp=timestamp,
        max_timestamp=timestamp,
        payload_size=len(raw),
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
    )


_TWO = struct.Struct("<ii")
_I32S = struct.Struct("<i")


__all__ = ["PreparedBatch", "encode_batch", "encode_headers", "prepare_batch", "prepare_record"]
