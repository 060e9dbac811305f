"""Decoding a stored record batch: its checksum, then its records as an Arrow table."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pyarrow as pa
from crc32c import crc32c

from sluice.log.batch_layout import (
    _CRC_FROM,
    _I32,
    _I64,
    FLAG_HEADERS,
    FLAG_NO_KEYS,
    FLAG_SPARSE,
    FLAG_TS64,
    FLAG_TS_CONST,
    HEADER_SIZE,
    HEADERS_TYPE,
    BatchHeader,
)
from sluice.log.binary_columns import binary_array
from sluice.log.compression import decompress


def check_crc(h: BatchHeader, batch: Any) -> bool:
    """Whether the checksum of the whole batch ``batch`` (header + payload) is right."""
    mv = memoryview(batch)
    crc = crc32c(mv[HEADER_SIZE : h.length])
    return crc32c(mv[_CRC_FROM:HEADER_SIZE], crc) == h.crc


def decode_headers(lengths: np.ndarray, data: Any) -> pa.Array:
    out: list[list[dict[str, Any]] | None] = []
    mv = memoryview(data)
    pos = 0
    for n in lengths.tolist():
        if n < 0:
            out.append(None)
            continue
        blob = mv[pos : pos + n]
        pos += n
        (count,) = struct.unpack_from("<H", blob, 0)
        p = 2
        items = []
        for _ in range(count):
            (kl,) = struct.unpack_from("<H", blob, p)
            key = bytes(blob[p + 2 : p + 2 + kl]).decode()
            p += 2 + kl
            (vl,) = struct.unpack_from("<i", blob, p)
            p += 4
            value = None if vl < 0 else bytes(blob[p : p + vl])
            p += max(vl, 0)
            items.append({"key": key, "value": value})
        out.append(items)
    return pa.array(out, type=HEADERS_TYPE)


def decode_records(h: BatchHeader, payload: Any) -> pa.Table:
    """The records of a batch (payload as stored, possibly compressed) as an Arrow table
    with columns offset, timestamp, key, value (and headers if the batch has them)."""
    raw = decompress(h.codec, payload, h.payload_size)
    if len(raw) != h.payload_size:
        raise ValueError(f"payload is {len(raw)} bytes, header says {h.payload_size}")
    n = h.record_count
    pos = 0
    if h.flags & FLAG_SPARSE:
        deltas = np.frombuffer(raw, _I32, n, pos)
        pos += 4 * n
        offsets = deltas.astype(_I64) + h.base_offset
    else:
        offsets = np.arange(h.base_offset, h.base_offset + n, dtype=_I64)
    if h.flags & FLAG_TS_CONST:
        ts = np.full(n, h.base_timestamp, _I64)
    elif h.flags & FLAG_TS64:
        ts = np.frombuffer(raw, _I64, n, pos) + h.base_timestamp
        pos += 8 * n
    else:
        ts = np.frombuffer(raw, _I32, n, pos).astype(_I64) + h.base_timestamp
        pos += 4 * n
    if h.flags & FLAG_NO_KEYS:
        klen = np.full(n, -1, _I32)
    else:
        klen = np.frombuffer(raw, _I32, n, pos)
        pos += 4 * n
    vlen = np.frombuffer(raw, _I32, n, pos)
    pos += 4 * n
    hlen = None
    if h.flags & FLAG_HEADERS:
        hlen = np.frombuffer(raw, _I32, n, pos)
        pos += 4 * n
    mv = memoryview(raw)
    ksize = int(np.maximum(klen, 0).sum())
    vsize = int(np.maximum(vlen, 0).sum())
    keys = binary_array(klen, mv[pos : pos + ksize])
    pos += ksize
    values = binary_array(vlen, mv[pos : pos + vsize])
    pos += vsize
    cols = [pa.array(offsets), pa.array(ts), keys, values]
    names = ["offset", "timestamp", "key", "value"]
    if hlen is not None:
        cols.append(decode_headers(hlen, mv[pos:]))
        names.append("headers")
        pos += int(np.maximum(hlen, 0).sum())
    if pos != len(raw):
        raise ValueError(f"payload has {len(raw) - pos} unexpected trailing bytes")
    return pa.Table.from_arrays(cols, names=names)


__all__ = ["check_crc", "decode_headers", "decode_records"]
