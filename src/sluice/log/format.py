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

The code lives in one module per job, all re-exported here:
:mod:`~sluice.log.batch_layout` (the constants above and header parsing),
:mod:`~sluice.log.compression` (the codecs), :mod:`~sluice.log.binary_columns`
(Arrow binary columns as lengths and bytes), :mod:`~sluice.log.batch_encode`
and :mod:`~sluice.log.batch_decode`.
"""

from __future__ import annotations

# Names outside __all__ are re-exported with ``as`` (an explicit re-export for
# mypy and ruff), so every name this module defined before the split still
# imports from here.
from sluice.log.batch_decode import check_crc, decode_records
from sluice.log.batch_decode import decode_headers as decode_headers
from sluice.log.batch_encode import _I32S as _I32S
from sluice.log.batch_encode import _TWO as _TWO
from sluice.log.batch_encode import PreparedBatch, encode_batch, prepare_batch
from sluice.log.batch_encode import encode_headers as encode_headers
from sluice.log.batch_encode import prepare_record as prepare_record
from sluice.log.batch_layout import _CRC_FROM as _CRC_FROM
from sluice.log.batch_layout import _I32 as _I32
from sluice.log.batch_layout import _I64 as _I64
from sluice.log.batch_layout import (
    CODEC_LZ4,
    CODEC_NONE,
    CODEC_ZSTD,
    CODECS,
    HEADER_SIZE,
    MAGIC,
    RECORD_SCHEMA,
    BatchHeader,
    parse_header,
)
from sluice.log.batch_layout import CODEC_NAMES as CODEC_NAMES
from sluice.log.batch_layout import FLAG_CONTROL as FLAG_CONTROL
from sluice.log.batch_layout import FLAG_HEADERS as FLAG_HEADERS
from sluice.log.batch_layout import FLAG_NO_KEYS as FLAG_NO_KEYS
from sluice.log.batch_layout import FLAG_SPARSE as FLAG_SPARSE
from sluice.log.batch_layout import FLAG_TRANSACTIONAL as FLAG_TRANSACTIONAL
from sluice.log.batch_layout import FLAG_TS64 as FLAG_TS64
from sluice.log.batch_layout import FLAG_TS_CONST as FLAG_TS_CONST
from sluice.log.batch_layout import HEADER as HEADER
from sluice.log.batch_layout import HEADERS_TYPE as HEADERS_TYPE
from sluice.log.batch_layout import VERSION as VERSION
from sluice.log.binary_columns import as_binary
from sluice.log.binary_columns import binary_array as binary_array
from sluice.log.binary_columns import binary_parts as binary_parts
from sluice.log.compression import _local as _local
from sluice.log.compression import _zstd as _zstd
from sluice.log.compression import codec_id
from sluice.log.compression import compress as compress
from sluice.log.compression import decompress as decompress

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
