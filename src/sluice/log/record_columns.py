"""Records of one producer call as columns, and how they are cut and grouped.

:class:`~sluice.log.producer.Producer` turns the records of one call (a list
of dicts, a whole DataFrame or Arrow table, or one record with headers) into
one ``_Records``: keys and values as Arrow binary arrays, split once into lengths
and bytes, with their timestamps and headers. This module holds that column
form and the array work done on it before anything is written: record sizes
(``max_record_bytes``), cuts into on-disk batches of about ``batch_bytes``
(:func:`batch_cuts`, also used by :mod:`sluice.log.transactions`), row indices
per partition, and a DataFrame's rows as JSON values.

>>> import numpy as np
>>> batch_cuts(np.array([10, 10, 10, 10]), 40)
[0, 2, 4]
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from sluice.log.errors import LogError
from sluice.log.format import binary_parts


@dataclass(slots=True)
class _Records:
    """Records of one call as columns, split once into lengths and bytes
    (:func:`~sluice.log.format.binary_parts`): the size checks, the batch cuts
    and the encoding all reuse them."""

    n: int
    keys: pa.Array | None  # None: no record has a key
    values: pa.Array
    ts: np.ndarray | int  # an int: the same timestamp for all
    headers: list[Any] | None
    klen: np.ndarray | None
    kdata: Any
    vlen: np.ndarray
    vdata: Any
    schema_checked: bool = False

    @classmethod
    def of(
        cls,
        keys: pa.Array | None,
        values: pa.Array,
        ts: np.ndarray | int,
        headers: list[Any] | None = None,
        *,
        schema_checked: bool = False,
    ) -> _Records:
        n = len(values)
        if keys is not None and keys.null_count == n:
            keys = None
        klen, kdata = binary_parts(keys) if keys is not None else (None, b"")
        vlen, vdata = binary_parts(values)
        return cls(n, keys, values, ts, headers, klen, kdata, vlen, vdata, schema_checked)

    @property
    def nbytes(self) -> int:
        return len(self.kdata) + len(self.vdata)

    @property
    def header_bytes(self) -> int:
        if self.headers is None:
            return 0
        return sum(len(json.dumps(h, default=str)) for h in self.headers if h)

    def sizes(self) -> np.ndarray:
        """Bytes of each record (key, value and headers), as ``max_record_bytes`` counts."""
        sizes = np.maximum(self.vlen, 0).astype(np.int64)
        if self.klen is not None:
            sizes += np.maximum(self.klen, 0)
        if self.headers is not None:
            sizes += np.array([len(json.dumps(h, default=str)) if h else 0 for h in self.headers])
        return sizes

    def take(self, idx: np.ndarray) -> _Records:
        ia = pa.array(idx)
        return _Records.of(
            self.keys.take(ia) if self.keys is not None else None,
            self.values.take(ia),
            self.ts[idx] if isinstance(self.ts, np.ndarray) else self.ts,
            [self.headers[i] for i in idx] if self.headers is not None else None,
            schema_checked=self.schema_checked,
        )

    def slice(self, a: int, b: int) -> _Records:
        return _Records.of(
            self.keys.slice(a, b - a) if self.keys is not None else None,
            self.values.slice(a, b - a),
            self.ts[a:b] if isinstance(self.ts, np.ndarray) else self.ts,
            self.headers[a:b] if self.headers is not None else None,
            schema_checked=self.schema_checked,
        )


def record_sizes(klen: np.ndarray, vlen: np.ndarray) -> np.ndarray:
    """Bytes of each record's key and value (as ``max_record_bytes`` counts them)."""
    return np.maximum(klen, 0).astype(np.int64) + np.maximum(vlen, 0)


def batch_cuts(sizes: np.ndarray, batch_bytes: int) -> list[int]:
    """Where to cut records of ``sizes`` bytes into batches of about ``batch_bytes``
    (per-record overhead counted as 8 bytes): ``[0, ..., n]``, at least one record
    per batch."""
    n = len(sizes)
    cum = np.cumsum(sizes + 8)
    cuts = [0]
    while cuts[-1] < n:
        start = int(cum[cuts[-1] - 1]) if cuts[-1] else 0
        nxt = int(np.searchsorted(cum, start + batch_bytes, side="right"))
        cuts.append(min(n, max(nxt, cuts[-1] + 1)))
    return cuts


def _group(pids: np.ndarray) -> dict[int, np.ndarray | None]:
    """Row indices per partition, in input order (``None``: all rows)."""
    first = int(pids[0])
    if (pids == first).all():
        return {first: None}
    order = np.argsort(pids, kind="stable")
    sorted_p = pids[order]
    bounds = np.flatnonzero(np.diff(sorted_p)) + 1
    out: dict[int, np.ndarray | None] = {}
    for chunk in np.split(order, bounds):
        out[int(pids[chunk[0]])] = chunk
    return out


def _json_rows(df: pl.DataFrame) -> pa.Array:
    """Each row as a JSON object, as a binary Arrow array (one NDJSON write, split
    at the newlines with NumPy)."""
    buf = io.BytesIO()
    df.write_ndjson(buf)
    data = buf.getvalue()
    arr = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(arr == 10)
    if len(ends) != df.height:  # a newline inside a value cannot happen in NDJSON
        raise LogError("internal error: NDJSON rows do not match the frame")
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts
    offs = np.zeros(df.height + 1, np.int64)
    np.cumsum(lengths, out=offs[1:])
    body = np.delete(arr, ends)  # the rows without their newlines, contiguous
    return pa.Array.from_buffers(
        pa.large_binary(), df.height, [None, pa.py_buffer(offs), pa.py_buffer(body)]
    )


__all__ = ["batch_cuts", "record_sizes"]
