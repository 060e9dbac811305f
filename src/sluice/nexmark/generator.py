"""The Nexmark event generator: persons, auctions and bids, vectorized.

It follows the nexmark-flink generator (``GeneratorConfig``, ``NexmarkGenerator``,
``PersonGenerator``, ``AuctionGenerator``, ``BidGenerator``): event kind by
``event_id % 50`` (1 person : 3 auctions : 46 bids), ids assigned from the event
id, hot sellers / bidders / auctions, the price formula, five categories, the
name / city / state lists, ``extra`` padding to the average row sizes, the
channel and url rules. Two deliberate differences make it deterministic and
*split-invariant* (any range of event ids is generated alone exactly as inside
the whole, like Beam's and RisingWave's generators):

* every random draw of event ``e`` comes from a counter-based SplitMix64 stream
  keyed by ``(seed, e, draw)``, not from one sequential ``SplittableRandom``;
* event time is a function of the event id only:
  ``base_time + floor(e * inter_event_delay_us) / 1000`` ms with the fixed base
  time 1436918400000 (2015-07-15), so times are monotone in the event id.

The random draws live in :mod:`sluice.nexmark._random`; random strings are slices
of a per-seed 64 KiB pool of characters drawn with the original distribution
(nexmark-flink already cuts ``extra`` from one reusable 1 MiB string; a smaller
pool stays in the CPU cache), built as Arrow string views in
:mod:`sluice.nexmark._strings`. Bids, 92 % of the events, are computed in steps
of ``_PART`` rows straight into their output columns, and any kind can be
generated alone (:func:`generate_kind`), only the columns asked for. Bidder ids
get ``FIRST_PERSON_ID`` added once (nexmark-flink adds it twice).
``channel-1``'s ``channel_id`` is -2147483648, as Java's
``Math.abs(Integer.reverse(1))``.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from sluice.errors import ConfigError
from sluice.nexmark._random import _below, _hi, _lo, _price, _price32, _unit, _words
from sluice.nexmark._strings import (
    FIRST_NAMES,
    HOT_CHANNELS,
    LAST_NAMES,
    NUM_CHANNELS,
    US_CITIES,
    US_STATES,
    Column,
    _Arena,
    _arrow,
    _email,
    _empty,
    _extra_lens,
    _matrix_views,
    _Str,
    _Tables,
    _tables,
)

#: Event time of event 0 (ms since the epoch), as in Beam and nexmark-rs.
BASE_TIME_MS = 1_436_918_400_000
#: nexmark-flink's default ``first-event.rate`` (events per second of event time).
DEFAULT_RATE = 10_000

FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
PERSON_PROPORTION, AUCTION_PROPORTION, BID_PROPORTION = 1, 3, 46
TOTAL_PROPORTION = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION
NUM_CATEGORIES = 5
NUM_ACTIVE_PEOPLE = 1000
NUM_IN_FLIGHT_AUCTIONS = 100
ID_LEAD = 10  # PERSON_ID_LEAD and AUCTION_ID_LEAD
HOT_GROUP = 100  # hot ids are the first (or second) of each block of 100
HOT_AUCTION_RATIO, HOT_SELLERS_RATIO, HOT_BIDDERS_RATIO = 2, 4, 4  # P(hot) = 1 - 1/ratio
AVG_PERSON_BYTES, AVG_AUCTION_BYTES, AVG_BID_BYTES = 200, 500, 100
# Auctions generated within the expiry horizon (numInFlightAuctions * 50 / 3).
_BID_BYTES = 8 + 8 + 8 + 8  # auction, bidder, price, date_time
_HORIZON_EVENTS = NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION // AUCTION_PROPORTION

_DT, _I, _S = pl.Datetime("ms"), pl.Int64(), pl.String()
PERSON_SCHEMA = pl.Schema(
    [
        ("id", _I), ("name", _S), ("email_address", _S), ("credit_card", _S),
        ("city", _S), ("state", _S), ("date_time", _DT), ("extra", _S),
    ]
)  # fmt: skip
AUCTION_SCHEMA = pl.Schema(
    [
        ("id", _I), ("item_name", _S), ("description", _S), ("initial_bid", _I),
        ("reserve", _I), ("date_time", _DT), ("expires", _DT), ("seller", _I),
        ("category", _I), ("extra", _S),
    ]
)  # fmt: skip
BID_SCHEMA = pl.Schema(
    [
        ("auction", _I), ("bidder", _I), ("price", _I), ("channel", _S), ("url", _S),
        ("date_time", _DT), ("extra", _S),
    ]
)  # fmt: skip
#: Columns of :func:`generate_events`.
EVENT_SCHEMA = pl.Schema(
    [
        ("event_type", pl.Int8()),
        ("date_time", _DT),
        ("person", pl.Struct(PERSON_SCHEMA)),
        ("auction", pl.Struct(AUCTION_SCHEMA)),
        ("bid", pl.Struct(BID_SCHEMA)),
    ]
)
PERSON, AUCTION, BID = 0, 1, 2
_KIND_OF_OFFSET = np.array(
    [PERSON] * PERSON_PROPORTION + [AUCTION] * AUCTION_PROPORTION + [BID] * BID_PROPORTION,
    dtype=np.int8,
)
_NAMES = ("person", "auction", "bid")
_FIRST_OFFSET = (0, PERSON_PROPORTION, PERSON_PROPORTION + AUCTION_PROPORTION)  # per kind
_PER_EPOCH = (PERSON_PROPORTION, AUCTION_PROPORTION, BID_PROPORTION)
# Bytes per event of the person and auction struct columns (8 per number, 16 per view).
_SPARSE_BYTES = sum(
    16 if dt == pl.String else 8 for s in (PERSON_SCHEMA, AUCTION_SCHEMA) for dt in s.values()
)
_SCHEMAS = (PERSON_SCHEMA, AUCTION_SCHEMA, BID_SCHEMA)
_CHUNK = 1 << 17  # events generated per internal step
_PART = 16_384  # bids computed per step: the temporaries stay small (in the CPU cache)


@dataclass(frozen=True)
class NexmarkConfig:
    """What to generate: ``events`` events (ids ``0 .. events-1``) for ``seed``,
    at ``rate`` events per second of event time.

    >>> cfg = NexmarkConfig(events=1000, seed=7)
    >>> cfg.rate, cfg.inter_event_delay_us
    (10000, 100.0)
    """

    events: int
    seed: int = 0
    rate: float = DEFAULT_RATE

    def __post_init__(self) -> None:
        _check_int("events", self.events, lo=0)
        _check_int("seed", self.seed, lo=0, hi=(1 << 64) - 1)
        r = self.rate
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or r <= 0:
            raise ConfigError(
                f"nexmark: rate must be a finite number of events per second > 0, got {r!r}"
            )
        _check_range(self, 0, self.events)

    @property
    def inter_event_delay_us(self) -> float:
        """Event-time gap between consecutive events, in microseconds."""
        return 1_000_000.0 / float(self.rate)


def _check_int(name: str, v: object, *, lo: int, hi: int | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ConfigError(f"nexmark: {name} must be an integer, got {v!r}")
    if int(v) < lo or (hi is not None and int(v) > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"nexmark: {name} must be {bound}, got {v!r}")


class NexmarkTables(NamedTuple):
    """The three Nexmark tables (see ``PERSON_SCHEMA``, ``AUCTION_SCHEMA``, ``BID_SCHEMA``)."""

    person: pl.DataFrame
    auction: pl.DataFrame
    bid: pl.DataFrame


# -- ids and times (pure functions of the event id) ---------------------------------------
def last_person_id(event_id: np.ndarray) -> np.ndarray:
    """Id of the last person generated at or before each event (``FIRST_PERSON_ID`` base)."""
    e = np.asarray(event_id, dtype=np.int64)
    off = np.minimum(e % TOTAL_PROPORTION, PERSON_PROPORTION - 1)
    return (e // TOTAL_PROPORTION) * PERSON_PROPORTION + off + FIRST_PERSON_ID


def last_auction_id(event_id: np.ndarray) -> np.ndarray:
    """Id of the last auction generated at or before each event (``FIRST_AUCTION_ID``
    base; ``FIRST_AUCTION_ID - 1`` before the first auction)."""
    e = np.asarray(event_id, dtype=np.int64)
    epoch, off = e // TOTAL_PROPORTION, e % TOTAL_PROPORTION - PERSON_PROPORTION
    epoch = np.where(off < 0, epoch - 1, epoch)
    off = np.where((off < 0) | (off >= AUCTION_PROPORTION), AUCTION_PROPORTION - 1, off)
    return epoch * AUCTION_PROPORTION + off + FIRST_AUCTION_ID


def event_times(cfg: NexmarkConfig, event_id: np.ndarray) -> np.ndarray:
    """Event time (ms since the epoch) of each event id, as Java's
    ``baseTime + (long)(n * interEventDelayUs) / 1000``."""
    e = np.asarray(event_id, dtype=np.int64)
    us = (e.astype(np.float64) * cfg.inter_event_delay_us).astype(np.int64)
    return BASE_TIME_MS + us // 1000


# -- ids drawn at random -------------------------------------------------------------------
def _next_person(w32: np.ndarray, last: np.ndarray) -> np.ndarray:
    """A random recent person id (up to ``ID_LEAD`` ids ahead of the last one)."""
    n = last - (FIRST_PERSON_ID - 1)
    if n.size and n.min() >= NUM_ACTIVE_PEOPLE:  # the usual case: a constant window
        return _below(w32, NUM_ACTIVE_PEOPLE + ID_LEAD) + (
            n + (FIRST_PERSON_ID - NUM_ACTIVE_PEOPLE)
        )
    active = np.minimum(n, NUM_ACTIVE_PEOPLE)
    return n - active + _below(w32, active + ID_LEAD) + FIRST_PERSON_ID


def _next_auction(w32: np.ndarray, last: np.ndarray) -> np.ndarray:
    """A random auction id among the in-flight ones (plus ``ID_LEAD`` ahead)."""
    last0 = last - FIRST_AUCTION_ID
    if last0.size and last0.min() >= NUM_IN_FLIGHT_AUCTIONS:  # the usual case
        span = NUM_IN_FLIGHT_AUCTIONS + 1 + ID_LEAD
        return _below(w32, span) + (last - NUM_IN_FLIGHT_AUCTIONS)
    lo = np.maximum(last0 - NUM_IN_FLIGHT_AUCTIONS, 0)
    return lo + _below(w32, last0 - lo + 1 + ID_LEAD) + FIRST_AUCTION_ID


def _hot(last: np.ndarray, first: int, plus: int = 0) -> np.ndarray:
    return ((last - first) // HOT_GROUP) * HOT_GROUP + (first + plus)


# -- the three kinds: columns as numpy arrays and string views -------------------------------
_Ids = tuple[np.ndarray, np.ndarray]  # event ids and their epochs (id // 50)


def _persons(seed: int, t: _Tables, e: np.ndarray, ts: np.ndarray) -> dict[str, Column]:
    w = _words(seed, e, 7)
    name_i = _below(_lo(w[0]), len(FIRST_NAMES)) * len(LAST_NAMES)
    name_i += _below(_hi(w[0]), len(LAST_NAMES))
    user_s, user_len = t.text.trimmed(_lo(w[1]), _hi(w[1]), 7)
    host_s, host_len = t.text.trimmed(_lo(w[2]), _hi(w[2]), 5)
    m = e.size
    cc = np.full((m + 1, 20), ord(" "), dtype=np.uint8)  # four "%04d" groups (19 bytes)
    for g, u in enumerate((_lo(w[3]), _hi(w[3]), _lo(w[4]), _hi(w[4]))):
        group = np.ndarray((m,), dtype="<u4", buffer=cc, offset=5 * g, strides=(20,))
        group[:] = t.digits.take(_below(u, 10_000))
    mail = _email(t.text.chars, user_s, user_len, host_s, host_len)
    city_i, state_i = _below(_lo(w[5]), len(US_CITIES)), _below(_hi(w[5]), len(US_STATES))
    current = 8 + t.name_len[name_i] + (user_len + host_len + 5) + 19 + t.city_len[city_i] + 2
    return {
        "id": last_person_id(e),
        "name": t.names.take(name_i),
        "email_address": _matrix_views(mail, user_len + host_len + 5),
        "credit_card": _matrix_views(cc[:m], np.full(m, 19, dtype=np.int64)),
        "city": t.cities.take(city_i),
        "state": t.states.take(state_i),
        "date_time": ts,
        "extra": t.letters.exact(_hi(w[6]), _extra_lens(current, AVG_PERSON_BYTES, _lo(w[6]))),
    }


def _auctions(cfg: NexmarkConfig, t: _Tables, e: np.ndarray, ts: np.ndarray) -> dict[str, Column]:
    w = _words(cfg.seed, e, 8)
    last_p = last_person_id(e)
    hot = _below(_lo(w[0]), HOT_SELLERS_RATIO) > 0
    seller = np.where(hot, _hot(last_p, FIRST_PERSON_ID), _next_person(_hi(w[0]), last_p))
    horizon = event_times(cfg, e + _HORIZON_EVENTS) - ts
    span = np.maximum(2 * horizon, 1).astype(np.float64)
    item, item_len = t.text.text(_hi(w[1]), _lo(w[4]), 20)
    desc, desc_len = t.text.text(_hi(w[4]), _lo(w[5]), 100)
    initial = _price(w[2])
    current = 8 + item_len + desc_len + 40
    return {
        "id": last_auction_id(e),
        "item_name": item,
        "description": desc,
        "initial_bid": initial,
        "reserve": initial + _price(w[6]),
        "date_time": ts,
        "expires": ts + 1 + np.floor(_unit(w[3]) * span).astype(np.int64),
        "seller": seller,
        "category": FIRST_CATEGORY_ID + _below(_lo(w[1]), NUM_CATEGORIES),
        "extra": t.letters.exact(_lo(w[7]), _extra_lens(current, AVG_AUCTION_BYTES, _hi(w[5]))),
    }


def _bid_part(
    cfg: NexmarkConfig, t: _Tables, e: np.ndarray, epoch: np.ndarray, out: dict[str, np.ndarray]
) -> None:
    """The bids of event ids ``e`` (``epoch = e // 50``), written into ``out`` (a
    slice of ``len(e)`` rows per wanted column; string columns as ``(rows, 2)`` views)."""
    w = _words(cfg.seed, e, 3)  # six 32-bit lanes per bid
    # Three coin flips from the low bits of a lane whose high bits draw the extra
    # length: nextInt(2) > 0 is one bit set, nextInt(4) > 0 one of two bits set.
    flags = _hi(w[2])
    # Every bid follows its epoch's person and auctions.
    if (col := out.get("auction")) is not None:
        last_a = epoch * AUCTION_PROPORTION
        last_a += AUCTION_PROPORTION - 1 + FIRST_AUCTION_ID
        hot = (flags & np.uint64(HOT_AUCTION_RATIO - 1)).astype(bool)
        col[:] = np.where(hot, _hot(last_a, FIRST_AUCTION_ID), _next_auction(_lo(w[0]), last_a))
    if (col := out.get("bidder")) is not None:
        last_p = epoch + (PERSON_PROPORTION - 1 + FIRST_PERSON_ID)  # one person per epoch
        hot = (flags & np.uint64((HOT_BIDDERS_RATIO - 1) << 2)).astype(bool)
        col[:] = np.where(hot, _hot(last_p, FIRST_PERSON_ID, 1), _next_person(_hi(w[0]), last_p))
    if (col := out.get("price")) is not None:
        _price32(_lo(w[1]), out=col)
    if "channel" in out or "url" in out:
        u = _hi(w[1])
        hot = (flags & np.uint64(1 << 4)).astype(bool)
        top = (u >> np.uint64(30)).view(np.int64)  # the top 2 bits pick one of 4 hot channels
        chan = np.where(hot, top, _below(u, NUM_CHANNELS) + len(HOT_CHANNELS))
        for name, table in (("channel", t.channels), ("url", t.urls)):
            if (col := out.get(name)) is not None:
                table.take(chan, out=col)
    if (col := out.get("date_time")) is not None:
        col[:] = event_times(cfg, e)
    if (col := out.get("extra")) is not None:
        lens = _extra_lens(_BID_BYTES, AVG_BID_BYTES, flags)
        t.letters.exact(_lo(w[2]), lens, out=col)


def _bids(
    cfg: NexmarkConfig, m: int, ids: Callable[[int, int], _Ids], columns: Sequence[str]
) -> dict[str, Column]:
    """``columns`` of ``m`` bids; ``ids(a, b)`` gives the event ids of rows ``a .. b-1``
    and their epochs. Rows are computed ``_PART`` at a time, so that the temporaries
    stay small, into outputs from Arrow's memory pool (see :func:`_empty`)."""
    t = _tables(cfg.seed)
    out = {
        c: _empty((m, 2), np.uint64) if BID_SCHEMA[c] == pl.String else _empty(m, np.int64)
        for c in columns
    }
    for a in range(0, m, _PART):
        b = min(a + _PART, m)
        _bid_part(cfg, t, *ids(a, b), {c: o[a:b] for c, o in out.items()})
    bufs = {"channel": t.channels.buffers, "url": t.urls.buffers, "extra": (t.letters.buffer,)}
    return {c: _Str(o, bufs[c]) if o.ndim == 2 else o for c, o in out.items()}


def _kind_count(kind: int, stop: int) -> int:
    """How many events of ``kind`` have an id below ``stop``."""
    first, per = _FIRST_OFFSET[kind], _PER_EPOCH[kind]
    return (stop // TOTAL_PROPORTION) * per + min(max(stop % TOTAL_PROPORTION - first, 0), per)


def _kind_ids(kind: int, lo: int, hi: int) -> _Ids:
    """Event ids and epochs (``id // 50``) of the events ``lo .. hi-1`` of ``kind``
    (counted from event 0)."""
    per = _PER_EPOCH[kind]
    q, r = divmod(lo, per)
    e, epoch = _kind_offsets(kind)
    if r + hi - lo <= e.size:  # a part: shift the offsets of the first epoch
        return e[r : r + hi - lo] + q * TOTAL_PROPORTION, epoch[r : r + hi - lo] + q
    j = np.arange(lo, hi, dtype=np.int64)
    epoch = j // per
    return epoch * TOTAL_PROPORTION + (j - epoch * per + _FIRST_OFFSET[kind]), epoch


@functools.lru_cache(maxsize=3)
def _kind_offsets(kind: int) -> _Ids:
    """``_kind_ids(kind, 0, n)`` for ``n = _PART + per epoch``: any ``_PART`` events
    of the kind are these shifted by whole epochs."""
    per = _PER_EPOCH[kind]
    j = np.arange(_PART + per, dtype=np.int64)
    return j // per * TOTAL_PROPORTION + (j % per + _FIRST_OFFSET[kind]), j // per


def _all_ids(start: int) -> Callable[[int, int], _Ids]:
    """``ids(a, b)``: the event ids ``start + a .. start + b - 1`` and their epochs."""

    def ids(a: int, b: int) -> _Ids:
        e = np.arange(start + a, start + b, dtype=np.int64)
        return e, e // TOTAL_PROPORTION

    return ids


def _kind_rows(cfg: NexmarkConfig, kind: int, e: np.ndarray) -> dict[str, Column]:
    """The persons or auctions of event ids ``e`` (bids: :func:`_bids`)."""
    t, ts = _tables(cfg.seed), event_times(cfg, e)
    return _persons(cfg.seed, t, e, ts) if kind == PERSON else _auctions(cfg, t, e, ts)


def _check_range(cfg: NexmarkConfig, start: int, stop: int) -> None:
    _check_int("start", start, lo=0)
    _check_int("stop", stop, lo=0)
    if start > stop:
        raise ConfigError(f"nexmark: start ({start}) must be <= stop ({stop})")
    if (int(stop) + _HORIZON_EVENTS) * cfg.inter_event_delay_us >= 2.0**62:
        raise ConfigError(
            f"nexmark: event {stop} at rate={cfg.rate} events/s lies beyond the "
            "representable times; use fewer events or a higher rate"
        )


def _table_chunk(
    cfg: NexmarkConfig, kind: int, start: int, stop: int, columns: Sequence[str] | None = None
) -> pl.DataFrame:
    """The events of ``kind`` among ids ``[start, stop)`` as plain ``columns`` (all
    if None, in the schema's order); bids compute only the columns asked for."""
    first = _kind_count(kind, start)
    m = _kind_count(kind, stop) - first
    names = list(_SCHEMAS[kind]) if columns is None else list(columns)
    if kind == BID:
        cols = _bids(cfg, m, lambda a, b: _kind_ids(BID, first + a, first + b), names)
    else:
        every = _kind_rows(cfg, kind, _kind_ids(kind, first, first + m)[0])
        cols = {c: every[c] for c in names}
    arrays = [_arrow(cols[c], m, c) for c in names]
    df = pl.from_arrow(pa.RecordBatch.from_arrays(arrays, names=names))
    assert isinstance(df, pl.DataFrame)
    return df


def _events_chunk(cfg: NexmarkConfig, start: int, stop: int) -> pl.DataFrame:
    n = stop - start
    e = np.arange(start, stop, dtype=np.int64)
    kind = _KIND_OF_OFFSET.take(e % TOTAL_PROPORTION)
    ts = event_times(cfg, e)
    arrays = [pa.array(kind, pa.int8()), _arrow(ts, n, "date_time")]
    arena = _Arena(n * _SPARSE_BYTES)
    for k in (PERSON, AUCTION, BID):
        sel = kind == k
        valid = pa.py_buffer(np.packbits(sel, bitorder="little"))
        if k == BID:  # 92% of the rows: cheaper to compute every row than to scatter
            cols = _bids(cfg, n, _all_ids(start), [c for c in BID_SCHEMA if c != "date_time"])
            cols = {c: ts if c == "date_time" else cols[c] for c in BID_SCHEMA}
            pos = None
        else:
            pos = np.flatnonzero(sel)
            cols = _kind_rows(cfg, k, e[pos])
        children = [_arrow(c, n, f, pos, valid, arena) for f, c in cols.items()]
        fields = [pa.field(f, a.type) for f, a in zip(cols, children, strict=True)]
        arrays.append(pa.StructArray.from_buffers(pa.struct(fields), n, [valid], children=children))
    df = pl.from_arrow(pa.RecordBatch.from_arrays(arrays, names=list(EVENT_SCHEMA)))
    assert isinstance(df, pl.DataFrame)
    return df


def generate_events(cfg: NexmarkConfig, start: int = 0, stop: int | None = None) -> pl.DataFrame:
    """Events with ids ``[start, stop)`` as one DataFrame in event-id order.

    Columns (``EVENT_SCHEMA``): ``event_type`` (Int8: 0 person, 1 auction, 2 bid),
    ``date_time`` and the structs ``person``, ``auction``, ``bid`` (null where the
    row is another kind). Deterministic and split-invariant: any range equals
    the same rows of a larger range. ``stop`` defaults to ``cfg.events``; ids
    beyond it are allowed (every id has its event).

    >>> cfg = NexmarkConfig(events=100)
    >>> ev = generate_events(cfg, 0, 50)
    >>> ev["event_type"].value_counts(sort=True)["count"].to_list()
    [46, 3, 1]
    >>> generate_events(cfg, 10, 20).equals(ev.slice(10, 10))
    True
    """
    stop = cfg.events if stop is None else stop
    _check_range(cfg, start, stop)
    parts = [_events_chunk(cfg, a, min(a + _CHUNK, stop)) for a in range(start, stop, _CHUNK)]
    if not parts:
        return pl.DataFrame(schema=EVENT_SCHEMA)
    return parts[0] if len(parts) == 1 else pl.concat(parts, rechunk=False)


def generate_kind(
    cfg: NexmarkConfig,
    kind: str,
    start: int = 0,
    stop: int | None = None,
    *,
    columns: Sequence[str] | None = None,
) -> pl.DataFrame:
    """The events of one ``kind`` (``"person"``, ``"auction"`` or ``"bid"``) among
    the ids ``[start, stop)``, as plain columns in event-id order: the rows of
    :func:`generate` (and of the unnested structs of :func:`generate_events`)
    without generating the other kinds. ``columns`` keeps only those columns, in
    that order; bids then compute only the columns asked for.

    >>> cfg = NexmarkConfig(events=1000)
    >>> b = generate_kind(cfg, "bid", 0, 100, columns=["auction", "price"])
    >>> b.height, b.columns
    (92, ['auction', 'price'])
    >>> b.equals(generate(cfg).bid.head(92).select("auction", "price"))
    True
    """
    k = kind_number(kind)
    names = check_columns(kind, columns)
    stop = cfg.events if stop is None else stop
    _check_range(cfg, start, stop)
    step = _CHUNK * 4
    parts = [_table_chunk(cfg, k, a, min(a + step, stop), names) for a in range(start, stop, step)]
    if not parts:
        return pl.DataFrame(schema={c: _SCHEMAS[k][c] for c in names})
    return parts[0] if len(parts) == 1 else pl.concat(parts)


def kind_number(kind: str) -> int:
    """``PERSON``, ``AUCTION`` or ``BID`` for ``"person"``, ``"auction"`` or ``"bid"``."""
    if kind not in _NAMES:
        raise ConfigError(f"nexmark: kind must be one of {', '.join(_NAMES)}; got {kind!r}")
    return _NAMES.index(kind)


def check_columns(kind: str, columns: Sequence[str] | None) -> list[str]:
    """The column names of ``kind`` to generate: ``columns``, checked, or all."""
    schema = _SCHEMAS[kind_number(kind)]
    if columns is None:
        return list(schema)
    if isinstance(columns, str) or not columns:
        raise ConfigError(f"nexmark: columns must be a non-empty list of names, got {columns!r}")
    names = list(columns)
    unknown = [c for c in names if c not in schema]
    if unknown or len(set(names)) < len(names):
        what = f"unknown columns {unknown}" if unknown else "a column twice"
        raise ConfigError(
            f"nexmark: columns of {kind!r} has {what}; the columns are {', '.join(schema)}"
        )
    return names


def generate(cfg: NexmarkConfig) -> NexmarkTables:
    """All ``cfg.events`` events as three tables (person, auction, bid), each in
    event-id order; equal to the unnested structs of :func:`generate_events`.

    >>> t = generate(NexmarkConfig(events=500))
    >>> t.person.height, t.auction.height, t.bid.height
    (10, 30, 460)
    >>> t.bid.columns
    ['auction', 'bidder', 'price', 'channel', 'url', 'date_time', 'extra']
    """
    tabs = []
    for kind, schema in zip((PERSON, AUCTION, BID), _SCHEMAS, strict=True):
        parts = [
            _table_chunk(cfg, kind, a, min(a + _CHUNK, cfg.events))
            for a in range(0, cfg.events, _CHUNK)
        ]
        tabs.append(pl.concat(parts) if parts else pl.DataFrame(schema=schema))
    return NexmarkTables(*tabs)


def write_parquet(
    cfg: NexmarkConfig, out_dir: str | os.PathLike[str], *, compression: str = "zstd"
) -> dict[str, Path]:
    """Generate ``cfg.events`` events into ``out_dir/{person,auction,bid}.parquet``,
    chunk by chunk (memory stays bounded). Returns ``{"person": path, ...}``.

    >>> import tempfile, polars as pl
    >>> with tempfile.TemporaryDirectory() as d:
    ...     paths = write_parquet(NexmarkConfig(events=1000), d)
    ...     pl.read_parquet(paths["bid"]).height
    920
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"nexmark: out_dir {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    paths = {n: out / f"{n}.parquet" for n in _NAMES}
    for kind, name, schema in zip((PERSON, AUCTION, BID), _NAMES, _SCHEMAS, strict=True):
        empty = pl.DataFrame(schema=schema).to_arrow()
        with pq.ParquetWriter(paths[name], empty.schema, compression=compression) as w:
            for a in range(0, cfg.events, _CHUNK * 4):
                df = _table_chunk(cfg, kind, a, min(a + _CHUNK * 4, cfg.events))
                w.write_table(df.to_arrow().cast(empty.schema))
    return paths


__all__ = [
    "AUCTION",
    "AUCTION_SCHEMA",
    "BASE_TIME_MS",
    "BID",
    "BID_SCHEMA",
    "DEFAULT_RATE",
    "EVENT_SCHEMA",
    "FIRST_AUCTION_ID",
    "FIRST_CATEGORY_ID",
    "FIRST_PERSON_ID",
    "PERSON",
    "PERSON_SCHEMA",
    "NexmarkConfig",
    "NexmarkTables",
    "check_columns",
    "event_times",
    "generate",
    "generate_events",
    "generate_kind",
    "kind_number",
    "last_auction_id",
    "last_person_id",
    "write_parquet",
]
