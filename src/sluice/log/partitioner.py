"""Choosing a record's partition: Kafka's default partitioner, vectorized.

A record with a key goes to ``(murmur2(key) & 0x7fffffff) % partitions``, the
formula of Kafka's ``DefaultPartitioner`` / ``BuiltInPartitioner`` (32-bit
MurmurHash2, seed ``0x9747b28c``, over the key bytes). It is stable across
processes, machines and versions, and the same key lands in the same partition
number as with a Kafka producer, so moving a topic to Kafka keeps per-key order
and co-partitioning. The hash runs over whole Arrow columns with NumPy: one pass
per 4-byte block of the longest key, no Python loop per record.

Records without a key are spread like Kafka's sticky partitioner: all keyless
records of one ``send_batch`` call go to one partition, and the next call
moves on to the next partition.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sluice.log.format import as_binary, binary_parts

_M = np.uint32(0x5BD1E995)
_SEED = 0x9747B28C


def murmur2(keys: pa.Array | list[bytes]) -> np.ndarray:
    """Kafka's ``Utils.murmur2`` of each key, as int32 (null keys hash to 0).

    >>> murmur2([b"21", b"foobar", b"abc"]).tolist()
    [-973932308, -790332482, 479470107]
    """
    arr = as_binary(keys if isinstance(keys, pa.Array) else pa.array(keys, pa.binary()))
    lengths, data = binary_parts(arr)
    n = len(lengths)
    if n == 0:
        return np.zeros(0, np.int32)
    sizes = np.maximum(lengths, 0).astype(np.int64)
    starts = np.zeros(n, np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    buf = np.zeros(len(data) + 4, np.uint32)
    buf[: len(data)] = np.frombuffer(data, np.uint8)
    h = (np.uint32(_SEED) ^ sizes.astype(np.uint32)).astype(np.uint32)
    blocks = sizes // 4
    with np.errstate(over="ignore"):
        for j in range(int(blocks.max())):
            idx = np.flatnonzero(blocks > j)
            p = starts[idx] + 4 * j
            k = buf[p] | (buf[p + 1] << 8) | (buf[p + 2] << 16) | (buf[p + 3] << 24)
            k = k * _M
            k ^= k >> np.uint32(24)
            k = k * _M
            h[idx] = (h[idx] * _M) ^ k
        rem = sizes % 4
        tail = starts + blocks * 4
        r3 = rem == 3
        h[r3] ^= buf[tail[r3] + 2] << 16
        r2 = rem >= 2
        h[r2] ^= buf[tail[r2] + 1] << 8
        r1 = rem >= 1
        h[r1] ^= buf[tail[r1]]
        h[r1] = h[r1] * _M
        h ^= h >> np.uint32(13)
        h = h * _M
        h ^= h >> np.uint32(15)
    h[lengths < 0] = 0
    return h.view(np.int32)


def murmur2_one(key: bytes) -> int:
    """Kafka's murmur2 of one key as an unsigned 32-bit int (the scalar fast path).

    >>> murmur2_one(b"21") == int(murmur2([b"21"]).view(np.uint32)[0])
    True
    """
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    n = len(key)
    h = (_SEED ^ n) & mask
    for i in range(0, n - 3, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        h = ((h * m) & mask) ^ ((k * m) & mask)
    tail = n & ~3
    rem = n & 3
    if rem == 3:
        h ^= key[tail + 2] << 16
    if rem >= 2:
        h ^= key[tail + 1] << 8
    if rem >= 1:
        h = ((h ^ key[tail]) * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def partition_for(keys: pa.Array | list[bytes], partitions: int) -> np.ndarray:
    """Kafka's partition of each key: ``(murmur2(key) & 0x7fffffff) % partitions``.

    >>> partition_for([b"21", b"foobar"], 4).tolist()
    [0, 2]
    """
    h = murmur2(keys).view(np.uint32) & np.uint32(0x7FFFFFFF)
    return (h % np.uint32(partitions)).astype(np.int32)


__all__ = ["murmur2", "murmur2_one", "partition_for"]
