"""Nexmark's strings and columns as Arrow arrays, built without a Python loop.

Random strings are slices of a per-seed 64 KiB pool of characters
(:class:`_Pool`), returned as Arrow string views (:class:`_Str`, 16 bytes per
row) that point into the pool; short built strings (email addresses, credit
card numbers) are rows of a byte matrix (:func:`_matrix_views`). The per-seed
tables (:class:`_Tables`: the pools, the channel / url table, the name, city and
state lists of nexmark-flink) are built once per seed. :func:`_arrow` turns
these columns, and numeric ones, into (possibly sparse) Arrow arrays.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa

from sluice.connectors.sources.generator import splitmix64
from sluice.nexmark._random import _S32, _below, _hi, _lo, _salt

# nexmark-flink's channel count and word lists.
NUM_CHANNELS = 10_000
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
US_CITIES = (
    "Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland",
    "Bend", "Redmond", "Seattle", "Kent", "Cheyenne",
)  # fmt: skip
FIRST_NAMES = (
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
)  # fmt: skip
LAST_NAMES = (
    "Shultz",
    "Abrams",
    "Spencer",
    "White",
    "Bartels",
    "Walton",
    "Smith",
    "Jones",
    "Noris",
)
_POOL = 1 << 16  # characters per string pool (small enough to stay in cache)
_MAX_EXACT = 1024  # longest ``extra`` (auctions: at most 1.2 * 500)


# -- strings as Arrow string views -----------------------------------------------------------
class _Str(NamedTuple):
    """A string column as Arrow string views (16 bytes per row) into ``buffers``."""

    views: np.ndarray  # (m, 2) uint64
    buffers: tuple[pa.Buffer, ...]

    def take(self, idx: np.ndarray, out: np.ndarray | None = None) -> _Str:
        """Rows ``idx``, into ``out`` (``(len(idx), 2)`` uint64) if given."""
        flat = self.views.view(np.complex128).ravel()  # one 16-byte item per row
        dest = None if out is None else out.view(np.complex128).ravel()
        return _Str(flat.take(idx, out=dest).view(np.uint64).reshape(-1, 2), self.buffers)

    @staticmethod
    def of(s: pl.Series) -> _Str:
        arr = s.rechunk().to_arrow(compat_level=pl.CompatLevel.newest())
        if arr.null_count or arr.type != pa.string_view():
            raise TypeError(f"expected non-null string views, got {arr.type}")
        bufs = arr.buffers()
        views = np.frombuffer(bufs[1], dtype=np.uint64).reshape(-1, 2)
        return _Str(views[arr.offset : arr.offset + len(arr)], tuple(bufs[2:]))


_BYTE_MASK = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)


class _Pool:
    """A buffer of ``_POOL`` random characters and what string views into it need."""

    def __init__(self, chars: np.ndarray) -> None:
        self.chars = np.concatenate([chars, np.zeros(16, np.uint8)])
        self.buffer = pa.py_buffer(self.chars)
        # The 8 bytes at every offset (unaligned little-endian words).
        self.word = np.ndarray((chars.size,), dtype="<u8", buffer=self.chars, strides=(1,))
        # For trimming: first non-space at or after i; one past the last non-space at or before i.
        ns = chars != ord(" ")
        idx = np.arange(chars.size, dtype=np.int64)
        self.nonspace_after = np.minimum.accumulate(np.where(ns, idx, chars.size)[::-1])[::-1]
        self.nonspace_end = np.maximum.accumulate(np.where(ns, idx + 1, 0))

    def views(
        self,
        starts: np.ndarray,
        lens: np.ndarray,
        *,
        long: bool = False,
        out: np.ndarray | None = None,
    ) -> _Str:
        """Strings ``chars[s : s + l]`` (no copy of the characters); ``starts`` and
        ``lens`` are non-negative int64. An Arrow view is ``len:u32 | first 4 bytes |
        buffer:u32 | offset:u32``, or for strings of at most 12 bytes ``len:u32 | the
        bytes, zero-padded``. ``long``: every length is above 12. ``out``: where to
        write the views (``(len(starts), 2)`` uint64)."""
        v = np.empty((starts.size, 2), dtype=np.uint64) if out is None else out
        head = self.word.take(starts)
        if not long:
            head &= _BYTE_MASK.take(np.minimum(lens, 4))
        head <<= _S32
        head |= lens.view(np.uint64)
        v[:, 0] = head
        np.left_shift(starts.view(np.uint64), _S32, out=v[:, 1])
        if not long:
            inline = self.word.take(starts + 4) & _BYTE_MASK.take(np.clip(lens - 4, 0, 8))
            np.copyto(v[:, 1], inline, where=lens <= 12)
        return _Str(v, (self.buffer,))

    def trimmed(
        self, w32_len: np.ndarray, w32_off: np.ndarray, max_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Start and length of nexmark-flink's ``nextString(max_len)``: ``3 + U[0,
        max_len - 3)`` random characters (a space with p = 1/13), trimmed."""
        n = 3 + _below(w32_len, max_len - 3)
        start = _below(w32_off, _POOL - max_len)
        s = self.nonspace_after.take(start)
        ln = np.maximum(self.nonspace_end.take(start + n - 1) - s, 0)
        return np.where(ln > 0, s, 0), ln

    def text(
        self, w32_len: np.ndarray, w32_off: np.ndarray, max_len: int
    ) -> tuple[_Str, np.ndarray]:
        """``nextString(max_len)`` as strings, and their lengths."""
        s, ln = self.trimmed(w32_len, w32_off, max_len)
        return self.views(s, ln), ln

    def exact(self, w32_off: np.ndarray, lens: np.ndarray, out: np.ndarray | None = None) -> _Str:
        """``nextExactString``: ``lens`` (<= ``_MAX_EXACT``) characters at a random
        offset, uniform below ``_POOL - _MAX_EXACT`` (a constant, so that a row does
        not depend on the others)."""
        starts = _below(w32_off, _POOL - _MAX_EXACT)
        return self.views(starts, lens, long=bool(lens.min(initial=13) > 12), out=out)


def _email(
    chars: np.ndarray, user: np.ndarray, ulen: np.ndarray, host: np.ndarray, hlen: np.ndarray
) -> np.ndarray:
    """``<user>@<host>.com`` as the rows of a 16-column byte matrix (zero padded);
    user and host are slices of ``chars`` of at most 6 and 4 bytes."""
    m = user.size
    out = np.zeros(m * 16, dtype=np.uint8)
    dest = np.arange(m, dtype=np.int64) * 16
    for src, ln, most in ((user, ulen, 6), (host, hlen, 4)):
        for k in range(most):
            sel = k < ln
            out[(dest + k)[sel]] = chars.take(src[sel] + k)
        dest = dest + ln
        if most == 6:
            out[dest] = ord("@")
            dest += 1
    for k, c in enumerate(b".com"):
        out[dest + k] = c
    return out.reshape(m, 16)


def _matrix_views(rows: np.ndarray, lens: np.ndarray) -> _Str:
    """Row ``i`` of a byte matrix (its first ``lens[i]`` bytes, zero after) as strings."""
    m, width = rows.shape
    data = np.ascontiguousarray(rows)
    if width < 12:
        data = np.zeros((m, 12), dtype=np.uint8)
        data[:, :width] = rows
    v = np.zeros((m, 16), dtype=np.uint8)
    v[:, 4:16] = data[:, :12]  # inline form (<= 12 bytes); long rows overwrite below
    v.view("<u4")[:, 0] = lens
    views = v.view(np.uint64)
    long = lens > 12
    views[long, 1] = (np.arange(m, dtype=np.uint64) * np.uint64(data.shape[1]))[long] << _S32
    return _Str(views, (pa.py_buffer(data),))


class _Tables:
    """Per-seed constants: the two character pools, the channel/url table, names."""

    def __init__(self, seed: int) -> None:
        w = splitmix64(np.arange(_POOL, dtype=np.uint64) + np.uint64(_salt(seed, 1)))
        self.letters = _Pool((ord("a") + _below(_lo(w), 26)).astype(np.uint8))  # extra: a-z
        space = _below(_hi(w), 13) == 0
        w = splitmix64(np.arange(_POOL, dtype=np.uint64) + np.uint64(_salt(seed, 2)))
        text = np.where(space, ord(" "), ord("a") + _below(_lo(w), 26)).astype(np.uint8)
        self.text = _Pool(text)  # nextString: letters and spaces
        n_hot = len(HOT_CHANNELS)
        urls = _base_urls(seed, n_hot + NUM_CHANNELS)
        w = splitmix64(np.arange(NUM_CHANNELS, dtype=np.uint64) + np.uint64(_salt(seed, 4)))
        keep_id = _below(_lo(w), 10) > 0  # 90% of the urls carry their channel_id
        names, links = list(HOT_CHANNELS), urls[:n_hot]
        for i in range(NUM_CHANNELS):
            names.append(f"channel-{i}")
            u = urls[n_hot + i]
            links.append(f"{u}&channel_id={_java_abs_reverse(i)}" if keep_id[i] else u)
        self.channels = _Str.of(pl.Series(names, dtype=pl.String))
        self.urls = _Str.of(pl.Series(links, dtype=pl.String))
        full = [f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES]
        self.names = _Str.of(pl.Series(full, dtype=pl.String))
        self.name_len = np.array([len(x) for x in full], dtype=np.int64)
        self.cities = _Str.of(pl.Series(US_CITIES, dtype=pl.String))
        self.city_len = np.array([len(x) for x in US_CITIES], dtype=np.int64)
        self.states = _Str.of(pl.Series(US_STATES, dtype=pl.String))
        k = np.arange(10_000)
        digits = np.stack([k // 1000, k // 100 % 10, k // 10 % 10, k % 10], axis=1)
        self.digits = (digits + ord("0")).astype(np.uint8).view("<u4").ravel()  # "%04d"


def _base_urls(seed: int, n: int) -> list[str]:
    """``https://www.nexmark.com/<s>/<s>/<s>/item.htm?query=1``; each ``<s>`` is 3 or
    4 characters, '_' with p = 1/13 else a letter (``nextString(5, '_')``)."""
    w = splitmix64(np.arange(n * 3 * 5, dtype=np.uint64) + np.uint64(_salt(seed, 3)))
    w = w.reshape(n * 3, 5)
    lens = 3 + _below(_lo(w[:, 0]), 2)
    chars = np.where(_below(_hi(w), 13) == 0, ord("_"), ord("a") + _below(_lo(w), 26))
    raw = chars[:, 1:].astype(np.uint8).tobytes().decode("ascii")
    seg = [raw[4 * i : 4 * i + int(lens[i])] for i in range(n * 3)]
    return [
        f"https://www.nexmark.com/{seg[3 * i]}/{seg[3 * i + 1]}/{seg[3 * i + 2]}/item.htm?query=1"
        for i in range(n)
    ]


def _java_abs_reverse(i: int) -> int:
    """``Math.abs(Integer.reverse(i))`` with Java int semantics: abs(MIN_VALUE) stays
    negative, so channel-1 has channel_id -2147483648 as in nexmark-flink."""
    r = int(f"{i & 0xFFFFFFFF:032b}"[::-1], 2)
    r = r - (1 << 32) if r >= 1 << 31 else r
    return r if r == -(1 << 31) else abs(r)


@functools.lru_cache(maxsize=8)
def _tables(seed: int) -> _Tables:
    return _Tables(seed)


def _extra_lens(current: np.ndarray | int, avg: int, w32: np.ndarray) -> np.ndarray:
    """``nextExtra``: pad a row of ``current`` bytes to ``avg`` on average (±20 %)."""
    if isinstance(current, int):  # bids: the same for every row
        want_ = avg - current
        delta_ = math.floor(want_ * 0.2 + 0.5)
        base = np.int64(max(want_ - delta_, 0))
        return _below(w32, 2 * delta_) + base if want_ >= 0 else np.zeros(w32.size, np.int64)
    want = avg - np.asarray(current, dtype=np.int64)
    delta = np.floor(want * 0.2 + 0.5).astype(np.int64)
    size = want - delta + _below(w32, np.maximum(2 * delta, 0))
    return np.where(want < 0, 0, size)


# -- assembling Arrow columns ----------------------------------------------------------------
Column = np.ndarray | _Str  # int64 numbers, or strings
_TS = "date_time", "expires"  # Int64 ms columns that are timestamps


def _empty(shape: int | tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """An uninitialised array in Arrow's memory pool. The pool reuses the memory of
    freed batches; a large numpy array instead gets fresh pages from the OS on
    every batch, and faulting them in costs more than computing the bids."""
    size = math.prod((shape,) if isinstance(shape, int) else shape) * np.dtype(dtype).itemsize
    return np.frombuffer(pa.allocate_buffer(size), dtype=dtype).reshape(shape)


class _Arena:
    """Zeroed memory for the sparse struct columns of one chunk, taken in one block:
    one large allocation is backed by huge pages where the OS allows, which makes
    the first touch of fresh memory much cheaper than many 1-2 MB arrays."""

    def __init__(self, nbytes: int) -> None:
        self.buf = np.zeros(nbytes, dtype=np.uint8)
        self.at = 0

    def zeros(self, n: int, dtype: type[np.generic]) -> np.ndarray:
        size = n * np.dtype(dtype).itemsize
        out = self.buf[self.at : self.at + size].view(dtype)
        self.at += size
        return out


def _arrow(
    col: Column,
    n: int,
    name: str = "",
    pos: np.ndarray | None = None,
    valid: pa.Buffer | None = None,
    arena: _Arena | None = None,
) -> pa.Array:
    """``col`` as an Arrow array of ``n`` rows: rows ``pos`` (all if None) hold the
    values, the others are null (``valid`` is the validity bitmap)."""
    zeros = np.zeros if arena is None else arena.zeros
    if isinstance(col, _Str):
        views = col.views
        if pos is not None:
            flat = zeros(n, np.complex128)  # one 16-byte view per row
            flat[pos] = col.views.view(np.complex128).ravel()
            views = flat.view(np.uint64)
        return pa.Array.from_buffers(
            pa.string_view(), n, [valid, pa.py_buffer(views), *col.buffers]
        )
    vals = col
    if pos is not None:
        vals = zeros(n, np.int64)
        vals[pos] = col
    typ = pa.timestamp("ms") if name in _TS else pa.int64()
    return pa.Array.from_buffers(typ, n, [valid, pa.py_buffer(vals)])
