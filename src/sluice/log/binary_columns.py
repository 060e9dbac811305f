"""Arrow binary columns as the format stores them: per-value lengths and contiguous bytes.

Used to encode keys and values (and by the producer and partitioner, which check
sizes and hash keys on the same split), and to rebuild Arrow arrays over decoded
payloads without copying.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sluice.log.batch_layout import _I32, _I64


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


__all__ = ["as_binary", "binary_array", "binary_parts"]
