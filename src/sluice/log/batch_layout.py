"""The constants of the record-batch format and the parsing of a batch's fixed header.

The header struct, the flag bits, the codec numbers and the Arrow types of decoded
records, shared by the encoder (:mod:`sluice.log.batch_encode`) and the decoder
(:mod:`sluice.log.batch_decode`). The layout itself is documented in
:mod:`sluice.log.format`.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

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


__all__ = [
    "CODECS",
    "CODEC_LZ4",
    "CODEC_NAMES",
    "CODEC_NONE",
    "CODEC_ZSTD",
    "FLAG_CONTROL",
    "FLAG_HEADERS",
    "FLAG_NO_KEYS",
    "FLAG_SPARSE",
    "FLAG_TRANSACTIONAL",
    "FLAG_TS64",
    "FLAG_TS_CONST",
    "HEADER",
    "HEADERS_TYPE",
    "HEADER_SIZE",
    "MAGIC",
    "RECORD_SCHEMA",
    "VERSION",
    "BatchHeader",
    "parse_header",
]
