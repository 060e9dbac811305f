"""The batch format: encode/decode round trips, checksums, compression, partitioner."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sluice.log.format import (
    CODECS,
    HEADER_SIZE,
    check_crc,
    decode_records,
    parse_header,
    prepare_batch,
)
from sluice.log.partitioner import murmur2, partition_for


def _roundtrip(batch, base=100):
    raw = batch.to_bytes(base)
    h = parse_header(raw)
    assert h is not None and h.length == len(raw)
    assert check_crc(h, raw)
    return h, decode_records(h, raw[HEADER_SIZE:])


@pytest.mark.parametrize("codec", sorted(CODECS.values()))
def test_round_trip_with_nulls_and_every_codec(codec: int) -> None:
    keys = pa.array([b"a", None, b"ccc", b""])
    vals = pa.array([b"1", b"22", None, b"4444" * 100])
    b = prepare_batch(np.array([10, 12, 11, 13]), keys, vals, codec=codec)
    h, t = _roundtrip(b)
    assert (h.base_offset, h.last_offset, h.record_count) == (100, 103, 4)
    assert (h.base_timestamp, h.max_timestamp) == (10, 13)
    assert t.column("offset").to_pylist() == [100, 101, 102, 103]
    assert t.column("timestamp").to_pylist() == [10, 12, 11, 13]
    assert t.column("key").to_pylist() == [b"a", None, b"ccc", b""]
    assert t.column("value").to_pylist() == [b"1", b"22", None, b"4444" * 100]


def test_compression_shrinks_repetitive_payloads() -> None:
    vals = pa.array([b'{"user": "ana", "kind": "click", "amount": 10.0}'] * 1000)
    keys = pa.nulls(1000, pa.binary())
    ts = np.arange(1000)
    plain = prepare_batch(ts, keys, vals, codec=CODECS["none"])
    for name in ("zstd", "lz4"):
        packed = prepare_batch(ts, keys, vals, codec=CODECS[name])
        assert packed.payload_len < plain.payload_len / 5, name


def test_wide_timestamps_headers_and_sparse_offsets() -> None:
    ts = np.array([0, 2**40])
    b = prepare_batch(
        ts,
        pa.array([b"k1", b"k2"]),
        pa.array([b"v1", b"v2"]),
        headers=[{"trace": b"x", "n": None}, None],
        offset_deltas=np.array([0, 5]),
        last_offset_delta=7,
    )
    h, t = _roundtrip(b, base=0)
    assert h.last_offset == 7 and h.record_count == 2
    assert t.column("offset").to_pylist() == [0, 5]
    assert t.column("timestamp").to_pylist() == [0, 2**40]
    assert t.column("headers").to_pylist() == [
        [{"key": "trace", "value": b"x"}, {"key": "n", "value": None}],
        None,
    ]


def test_any_flipped_bit_fails_the_checksum() -> None:
    b = prepare_batch(np.array([1, 2]), pa.array([b"k", b"k"]), pa.array([b"hello", b"world"]))
    raw = bytearray(b.to_bytes(7))
    for i in range(12, len(raw)):  # everything after magic and length
        flipped = bytearray(raw)
        flipped[i] ^= 0x10
        h = parse_header(bytes(flipped))
        assert h is None or not check_crc(h, bytes(flipped)), i


def test_the_checksum_covers_the_base_offset() -> None:
    b = prepare_batch(np.array([1]), pa.array([b"k"]), pa.array([b"v"]))
    raw = b.to_bytes(5)
    other = b.header(6)[:8] + raw[8:16] + b.header(6)[16:] + raw[HEADER_SIZE:]
    h = parse_header(other)
    assert h is not None and not check_crc(h, other)


def test_murmur2_matches_kafka() -> None:
    # the test vectors of Kafka's UtilsTest.testMurmur2
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    assert murmur2(list(cases)).tolist() == list(cases.values())


def test_partitioner_is_kafkas_formula_and_handles_strings() -> None:
    keys = [b"21", b"foobar", b"abc"]
    expected = [(h & 0x7FFFFFFF) % 5 for h in murmur2(keys).tolist()]
    assert partition_for(keys, 5).tolist() == expected
    assert partition_for(pa.array(["21", "foobar", "abc"]), 5).tolist() == expected
