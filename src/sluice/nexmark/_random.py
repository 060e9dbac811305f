"""Counter-based random draws for the Nexmark generator.

Every random word of event ``e`` is a position of one SplitMix64 sequence keyed
by the seed: word ``j`` of event ``e`` is position ``16 e + j``. A draw is then a
pure function of ``(seed, e, j)``, so any range of event ids is generated alone
exactly as inside the whole. Small draws use 32-bit lanes of the words
(multiply-shift, :func:`_below`). Prices follow nexmark-flink's formula.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from sluice.connectors.sources.generator import splitmix64

_GOLD = 0x9E3779B97F4A7C15
_STRIDE = 16  # random words reserved per event id
_M64 = (1 << 64) - 1
_U32 = np.uint64(0xFFFF_FFFF)
_S32 = np.uint64(32)
_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@functools.lru_cache(maxsize=64)
def _salt(seed: int, stream: int) -> int:
    x = np.array([(seed ^ (stream * 0xD1B54A32D192ED03)) & _M64], dtype=np.uint64)
    return int(splitmix64(x)[0])


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer, in place (``splitmix64(x) == _mix(x + golden)``)."""
    t = z >> np.uint64(30)
    z ^= t
    z *= _C1
    np.right_shift(z, np.uint64(27), out=t)
    z ^= t
    z *= _C2
    np.right_shift(z, np.uint64(31), out=t)
    z ^= t
    return z


def _words(seed: int, ids: np.ndarray, k: int) -> np.ndarray:
    """``k`` random 64-bit words per event id, shape ``(k, len(ids))``: positions
    ``16 e + j`` of the SplitMix64 sequence that starts at the seed's salt."""
    base = ids.view(np.uint64) * np.uint64((_STRIDE * _GOLD) & _M64)
    return _mix(base[None, :] + _steps(seed, k)[:, None])


@functools.lru_cache(maxsize=64)
def _steps(seed: int, k: int) -> np.ndarray:
    return np.array([(_salt(seed, 0) + (j + 1) * _GOLD) & _M64 for j in range(k)], np.uint64)


def _lo(w: np.ndarray) -> np.ndarray:
    return w & _U32


def _hi(w: np.ndarray) -> np.ndarray:
    return w >> _S32


def _below(u32: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Uniform ints in ``[0, n)`` from 32 random bits (multiply-shift; n < 2**32)."""
    r = u32 * (np.uint64(n) if isinstance(n, int) else n.astype(np.uint64))
    r >>= _S32
    return r.view(np.int64)  # < 2**32: the same bits as int64


def _unit(w: np.ndarray) -> np.ndarray:
    """Uniform doubles in ``[0, 1)`` from the top 53 bits."""
    return (w >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _price(w: np.ndarray) -> np.ndarray:
    """``Math.round(10 ** (U * 6) * 100)``: prices from 1.00 to 1,000,000.00 in cents."""
    x = np.exp(_unit(w) * (6.0 * math.log(10.0)))
    x *= 100.0
    x += 0.5
    return np.floor(x, out=x).astype(np.int64)


def _price32(u32: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``_price(u32 << 32)`` into ``out`` (32 random bits are plenty for cents), in
    fewer steps: the unit double of the shifted word is ``u32 * 2**-32`` exactly,
    and scaling by a power of two commutes with rounding, so the product below is
    bit for bit the same."""
    x = u32.astype(np.float64)
    x *= 6.0 * math.log(10.0) * 2.0**-32
    np.exp(x, out=x)
    x *= 100.0
    x += 0.5
    np.copyto(out, x, casting="unsafe")  # truncation is the floor: x > 0
    return out
