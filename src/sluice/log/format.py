"""The on-disk format of a record batch: a fixed header and a columnar payload.

A segment file is a sequence of record batches. A batch is a 68-byte header
followed by its payload. All integers are little-endian.

======  =====  ======================================================================
offset  type   field
======  =====  ======================================================================
0       4s     magic ``b"SLGB"``
4       u32    length: bytes of the whole batch, header included
8       u32    crc: CRC-32C (Castagnoli, as Kafka) of the payload, then header bytes 12..68
12      u8     version (1)
13      u8     flags: 1 timestamps are 64-bit, 2 offset deltas stored (a compacted
               batch), 4 records have headers, 16 transactional, 32 control batch,
               64 all timestamps equal the base (no timestamp column), 128 no keys
               (no key-length column)
14      u8     codec: 0 none, 3 lz4 (block), 4 zstd (Kafka's numbers)
15      u8     reserved (0)
16      i64    base offset: offset of the batch's first record
24      i32    last offset delta: last offset - base offset (kept by compaction)
28      i32    record count
32      i64    base timestamp: smallest record timestamp (ms since the epoch)
40      i64    max timestamp
48      i64    producer id (-1: none)
56      i16    producer epoch (-1: none)
58      i16    reserved (0)
60      i32    base sequence (-1: none)
64      u32    payload size before compression
======  =====  ======================================================================

The payload (compressed as a whole by the codec) holds the records column by
column, so a batch is encoded and decoded with a few NumPy/Arrow calls and no
Python loop per record::

    [offset deltas  i32 x n]   only with flag 2; otherwise offsets are base + 0..n-1
    [timestamp deltas i32 x n] (i64 x n with flag 1), relative to the base timestamp;
                               absent with flag 64
    [key lengths    i32 x n]   -1: null key; absent with flag 128 (all keys null)
    [value lengths  i32 x n]   -1: null value (a tombstone)
    [header lengths i32 x n]   only with flag 4
    key bytes | value bytes | header bytes

Headers (the slow path) are, per record, ``u16 count`` then per header ``u16
key length, key (UTF-8), i32 value length (-1: null), value``.

The checksum covers everything but magic and length, the base offset included,
so a writer computes the payload's CRC before it knows the offset and finishes
it with the 56 header bytes once the offset is assigned. Producer id, epoch and
base sequence are carried for idempotent producers (exactly-once is added on
top of this format without changing it); the transactional and control flags
are reserved for transactional appends.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from crc32c import crc32c

from sluice.errors import ConfigError

MAGIC = b"SLGB"
VERSION = 1
HEADER = struct.Struct("<4sIIBBBBqiiqqqhhiI")
HEADER_SIZE = HEADER.size  # 68
#: Bytes of the header covered by the checksum (after magic, length and crc).
_CRC_FROM = 12

FLAG_TS64 = 1
FLAG_SPARSE = 2
FLAG_HEADERS = 4
FLAG_TRANSACTIONAL = 16
FLAG_CONTROL = 32
FLAG_TS_CONST = 64
FLAG_NO_KEYS = 128

CODEC_NONE = 0
CODEC_LZ4 = 3
CODEC_ZSTD = 4
CODECS = {"none": CODEC_NONE, "lz4": CODEC_LZ4, "zstd": CODEC_ZSTD}
CODEC_NAMES = {v: k for k, v in CODECS.items()}

#: Arrow schema of decoded records (``headers`` only when a batch has them).
RECORD_SCHEMA = pa.schema(
    [
        ("offset", pa.int64()),
        ("timestamp", pa.int64()),
        ("key", pa.binary()),
        ("value", pa.binary()),
    ]
)
HEADERS_TYPE = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))

_I32 = np.dtype("<i4")
_I64 = np.dtype("<i8")


class BatchHeader(NamedTuple):
    """The fixed header of one record batch."""

    magic: bytes
    length: int
    crc: int
    version: int
    flags: int
    codec: int
    reserved: int
    base_offset: int
    last_offset_delta: int
    record_count: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    reserved2: int
    base_sequence: int
    payload_size: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1


def parse_header(buf: Any, pos: int = 0) -> BatchHeader | None:
    """The header at ``pos`` of ``buf``, or ``None`` if it is not a plausible one
    (wrong magic or version, impossible length). The checksum is not verified here."""
    if len(buf) - pos < HEADER_SIZE:
        return None
    h = BatchHeader._make(HEADER.unpack_from(buf, pos))
    if (
        h.magic != MAGIC
        or h.version != VERSION
        or h.length < HEADER_SIZE
        or h.record_count < 0
        or h.last_offset_delta < h.record_count - 1
        or h.base_offset < 0
    ):
        return None
    return h


# -- compression ----------------------------------------------------------------------
_local = threading.local()


def _zstd() -> tuple[Any, Any]:
    pair = getattr(_local, "zstd", None)
    if pair is None:
        import zstandard

        pair = (zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor())
        _local.zstd = pair
    return pair


def compress(codec: int, data: Any) -> Any:
    if codec == CODEC_NONE:
        return data
    if codec == CODEC_ZSTD:
        return _zstd()[0].compress(data)
    if codec == CODEC_LZ4:
        import lz4.block

        return lz4.block.compress(data, store_size=False)
    raise ConfigError(f"unknown compression codec {codec}")


def decompress(codec: int, data: Any, size: int) -> Any:
    if codec == CODEC_NONE:
        return data
    if codec == CODEC_ZSTD:
        return _zstd()[1].decompress(data, max_output_size=size)
    if codec == CODEC_LZ4:
        import lz4.block

        return lz4.block.decompress(data, uncompressed_size=size)
    raise ValueError(f"unknown compression codec {codec}")


def codec_id(name: str) -> int:
    """The codec number of ``"none"``, ``"zstd"`` or ``"lz4"``.

    >>> codec_id("zstd")
    4
    """
    try:
        return CODECS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown compression {name!r}; use 'none', 'zstd' or 'lz4'") from None


# -- Arrow binary columns ---------------------------------------------------------------
def as_binary(arr: Any) -> pa.Array:
    """A binary or large_binary Arrow array from bytes/strings (Arrow, Polars, lists)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    elif not isinstance(arr, pa.Array):
        to_arrow = getattr(arr, "to_arrow", None)
        arr = to_arrow() if to_arrow is not None else pa.array(arr)
        if isinstance(arr, pa.ChunkedArray):
            return as_binary(arr)
    t = arr.type
    if t in (pa.binary(), pa.large_binary()):
        return arr
    if t in (pa.string(), pa.large_string()):
        return arr.view(pa.binary() if t == pa.string() else pa.large_binary())
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.binary())
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t):
        return pc.cast(arr, pa.large_binary())
    return pc.cast(pc.cast(arr, pa.large_string()), pa.large_binary())


def binary_parts(arr: pa.Array) -> tuple[np.ndarray, Any]:
    """Per-value lengths (int32, -1 for null) and the contiguous data bytes."""
    n = len(arr)
    if n == 0:
        return np.zeros(0, _I32), b""
    if arr.null_count == n:
        return np.full(n, -1, _I32), b""
    bufs = arr.buffers()
    wide = arr.type == pa.large_binary()
    dtype = _I64 if wide else _I32
    offs = np.frombuffer(bufs[1], dtype=dtype, count=n + 1, offset=arr.offset * dtype.itemsize)
    lengths = np.subtract(offs[1:], offs[:-1], dtype=_I32)
    if arr.null_count:
        valid = np.asarray(arr.is_valid())
        if lengths[~valid].any():  # null slots that span bytes: rebuild compactly
            arr = pa.array(arr.to_pylist(), type=pa.binary())
            return binary_parts(arr)
        lengths = lengths.copy()
        lengths[~valid] = -1
    start, end = int(offs[0]), int(offs[-1])
    data: Any = b"" if bufs[2] is None or end == start else memoryview(bufs[2])[start:end]
    return lengths, data


def binary_array(lengths: np.ndarray, data: Any) -> pa.Array:
    """Inverse of :func:`binary_parts`: an Arrow binary array over ``data`` (no copy)."""
    n = len(lengths)
    sizes = np.maximum(lengths, 0)
    offsets = np.zeros(n + 1, _I32)
    np.cumsum(sizes, out=offsets[1:])
    nulls = lengths < 0
    if nulls.any():
        validity = pa.py_buffer(np.packbits(~nulls, bitorder="little"))
        null_count = int(nulls.sum())
    else:
        validity, null_count = None, 0
    return pa.Array.from_buffers(
        pa.binary(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(data)], null_count
    )


# -- encoding --------------------------------------------------------------------------
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


# -- decoding --------------------------------------------------------------------------
def check_crc(h: BatchHeader, batch: Any) -> bool:
    """Whether the checksum of the whole batch ``batch`` (header + payload) is right."""
    mv = memoryview(batch)
    crc = crc32c(mv[HEADER_SIZE : h.length])
    return crc32c(mv[_CRC_FROM:HEADER_SIZE], crc) == h.crc


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


__all__ = [
    "CODECS",
    "CODEC_LZ4",
    "CODEC_NONE",
    "CODEC_ZSTD",
    "HEADER_SIZE",
    "MAGIC",
    "RECORD_SCHEMA",
    "BatchHeader",
    "PreparedBatch",
    "as_binary",
    "check_crc",
    "codec_id",
    "decode_records",
    "encode_batch",
    "parse_header",
    "prepare_batch",
]
