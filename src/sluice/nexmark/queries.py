"""The Nexmark queries, written with the Python API.

Semantics follow the nexmark-flink SQL queries (``queries/qN.sql``): the same
window kinds, sizes and slides, join conditions and output columns in the same
order, named in snake_case. Each query is a function of a :class:`NexmarkInput`
(the person, auction and bid streams, :mod:`sluice.nexmark.inputs`) returning the
result stream; :data:`QUERIES` registers them by name, and :func:`run_query`
(:mod:`sluice.nexmark.runner`) runs one and measures it.

>>> import sluice as sl
>>> from sluice.nexmark.queries import QUERIES, NexmarkInput
>>> flow = sl.Flow("q2")
>>> out = sl.sinks.collect()
>>> QUERIES["q2"].build(NexmarkInput.generated(flow, events=5_000)).sink(out)
>>> _ = flow.run()
>>> out.to_polars().columns
['auction', 'price']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from sluice.errors import ConfigError
from sluice.nexmark._daily import q15, q16, q17
from sluice.nexmark.inputs import WATERMARK, NexmarkInput
from sluice.nexmark.runner import QueryRun, run_query

#: The side input of q13: ``key,value`` rows for keys 0..9999 (nexmark-flink's
#: ``side_input.txt``: ``i,i``), shipped with the package.
SIDE_INPUT = Path(__file__).with_name("side_input.csv")


@dataclass(frozen=True)
class Query:
    """One Nexmark query: ``build(input) -> result stream``."""

    name: str
    title: str
    build: Callable[[NexmarkInput], Any]
    #: False where results depend on processing time (q12)
    deterministic: bool = True
    #: the query writes its own output (q10's partitioned files) given a directory
    sink: Callable[[Any, Path], None] | None = None
    #: the columns the query reads per stream (read from files with pushdown)
    columns: dict[str, list[str]] | None = None


# -- helpers --------------------------------------------------------------------------------
def _sl() -> Any:
    import sluice as sl

    return sl


# -- the queries -----------------------------------------------------------------------------
def q0(n: NexmarkInput) -> Any:
    """Pass-through: measures the source and sink."""
    return n.bid.select("auction", "bidder", "price", "date_time", "extra")


def q1(n: NexmarkInput) -> Any:
    """Currency conversion: prices in euro (``0.908 * price``)."""
    return n.bid.select(
        "auction", "bidder", (pl.col("price") * 0.908).alias("price"), "date_time", "extra"
    )


def q2(n: NexmarkInput) -> Any:
    """Selection: bids on auctions whose id is a multiple of 123."""
    return n.bid.filter(pl.col("auction") % 123 == 0).select("auction", "price")


def q3(n: NexmarkInput) -> Any:
    """Local item suggestion: sellers in OR, ID or CA of category-10 auctions
    (a regular join of unbounded streams)."""
    a = n.auction.filter(pl.col("category") == 10).select("id", "seller")
    p = n.person.filter(pl.col("state").is_in(["OR", "ID", "CA"])).select(
        pl.col("id").alias("pid"), "name", "city", "state"
    )
    return a.join(p, left_on="seller", right_on="pid").select("name", "city", "state", "id")


def _winning_candidates(n: NexmarkInput, auction_columns: list[str], detail: bool = True) -> Any:
    """Auctions joined with their bids placed while the auction was open
    (``B.date_time BETWEEN A.date_time AND A.expires``); without ``detail``,
    the bid's ``bidder`` and ``extra`` are left out (and need not be read)."""
    a = n.auction.select(*auction_columns)
    b = n.bid.select(
        "auction",
        *(["bidder"] if detail else []),
        "price",
        pl.col("date_time").alias("bid_date_time"),
        *([pl.col("extra").alias("bid_extra")] if detail else []),
    )
    return a.join(b, left_on="id", right_on="auction").filter(
        pl.col("bid_date_time").is_between(pl.col("date_time"), pl.col("expires"))
    )


def q4(n: NexmarkInput) -> Any:
    """Average price per category of the winning bids (the highest bid while
    the auction was open). An upsert stream keyed by ``id`` (the category):
    the averages are updated as bids arrive. ``final`` is BIGINT, as Flink's
    ``AVG`` of a BIGINT (truncated)."""
    sl = _sl()
    won = (
        _winning_candidates(n, ["id", "category", "date_time", "expires"])
        .key_by("id", "category")
        .agg(final=sl.agg.max("price"))
    )
    return (
        won.key_by("category")
        .agg(_sum=sl.agg.sum("final"), _n=sl.agg.count("final"))
        .select(pl.col("category").alias("id"), (pl.col("_sum") // pl.col("_n")).alias("final"))
        .with_upsert_key("id")
    )


_AUCTION = [
    "id",
    "item_name",
    "description",
    "initial_bid",
    "reserve",
    "date_time",
    "expires",
    "seller",
    "category",
    "extra",
]


def q9(n: NexmarkInput) -> Any:
    """Winning bids: every auction with its highest bid while it was open
    (earliest first among equal prices). An upsert stream keyed by ``id``."""
    return (
        _winning_candidates(n, _AUCTION)
        .key_by("id")
        .top_n(1, ["price", "bid_date_time"], descending=[True, False], rank=None)
        .select(
            *_AUCTION,
            pl.col("id").alias("auction"),
            "bidder",
            "price",
            "bid_date_time",
            "bid_extra",
        )
        .with_upsert_key("id")
    )


_BID = ["auction", "bidder", "price", "channel", "url", "date_time", "extra"]


def q18(n: NexmarkInput) -> Any:
    """The last bid of every (bidder, auction): an upsert stream keyed by them."""
    return (
        n.bid.key_by("bidder", "auction")
        .top_n(1, "date_time", descending=True, rank=None)
        .select(*_BID)
    )


def q19(n: NexmarkInput) -> Any:
    """The 10 highest bids of every auction, with their ``rank_number``: an
    upsert stream keyed by (auction, rank_number)."""
    return (
        n.bid.key_by("auction")
        .top_n(10, "price", descending=True, rank="rank_number")
        .select(*_BID, "rank_number")
    )


def q5(n: NexmarkInput) -> Any:
    """Hot items: auctions with the most bids in each 10 s window sliding by 2 s
    (ties included)."""
    sl = _sl()
    hop = sl.windows.sliding("10s", "2s")
    counts = n.bid.key_by("auction").window(hop).agg(num=sl.agg.count())
    # the max per hop window: all counts of a window carry the time window_end - 1,
    # so a tumbling window of the slide groups exactly one hop window's counts
    maxes = (
        counts.select(pl.col("window_start").alias("ws"), pl.col("window_end").alias("we"), "num")
        .key_by("ws", "we")
        .window(sl.windows.tumbling("2s"))
        .agg(maxn=sl.agg.max("num"))
        .select(pl.col("ws").alias("window_start"), pl.col("we").alias("window_end"), "maxn")
    )
    return (
        counts.window_join(maxes).filter(pl.col("num") >= pl.col("maxn")).select("auction", "num")
    )


def q6(n: NexmarkInput) -> Any:
    """Average selling price by seller: for every closed auction, the average
    winning price of its seller's last closed auctions (this one and up to 10
    before it).

    nexmark-flink's ``q6.sql`` (``AVG(price) OVER (PARTITION BY seller ORDER BY
    dateTime ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)`` over the winning
    bids, a top-1 per auction that is updated as bids arrive) does not run in
    Flink: an OVER window cannot consume retractions. Sluice runs it on
    **closed** auctions, as Beam's Query6 does:

    1. The winning price of an auction is its highest bid placed while it was
       open (``B.date_time BETWEEN A.date_time AND A.expires``, as q4 and q9).
       The auction closes when the watermark passes ``expires``; only then is
       the price final and emitted. Auctions without such a bid produce
       nothing; at end of input every auction closes.
    2. Per seller, closed auctions are ordered by ``(expires, id)`` (close
       order, like an event-time OVER window ordered by ``expires``), so the
       result does not depend on parallelism or on how rows interleave.
    3. Each closed auction emits one row ``(seller, avg_price)``: the average
       of the winning prices of this auction and up to 10 preceding ones
       (``ROWS BETWEEN 10 PRECEDING AND CURRENT ROW``), BIGINT truncated as
       Flink's ``AVG`` of a BIGINT. An append stream.

    The candidate bids are reduced per batch to each auction's highest (a
    combiner), then one process function keyed by seller
    (:class:`sluice.nexmark._q6.ClosedAuctionAverage`) keeps the open
    auctions' highest prices and the seller's last 10 winning prices, in
    keyed state and timers (checkpointed): state is held per auction until it
    closes and per seller for 10 prices. (The regular join before it keeps
    both inputs, as in q4 and q9.)"""
    from sluice.nexmark._q6 import ClosedAuctionAverage

    return (
        _winning_candidates(n, ["id", "seller", "date_time", "expires"], detail=False)
        .select("id", "seller", pl.col("expires").dt.epoch("ms").alias("expires"), "price")
        # a combiner: within a batch, only an auction's highest bid can win
        .filter(pl.col("price") == pl.col("price").max().over("id"))
        .key_by("seller")
        .process(ClosedAuctionAverage(), name="closed_auction_average")
    )


def q7(n: NexmarkInput) -> Any:
    """Highest bid: bids whose price is the maximum of their 10 s tumbling
    window (``B.date_time BETWEEN window_end - 10 s AND window_end``)."""
    sl = _sl()
    maxes = (
        n.bid.window(sl.windows.tumbling("10s"))
        .agg(maxprice=sl.agg.max("price"))
        .select("maxprice", "window_end")
    )
    # a window result's event time is window_end - 1 ms, so the SQL condition
    # window_end - 10 s <= bid time <= window_end is: result time in
    # [bid time - 1 ms, bid time + 10 s - 1 ms]
    return n.bid.interval_join(
        maxes, left_on="price", right_on="maxprice", lower=-1, upper=9_999
    ).select("auction", "price", "bidder", "date_time", "extra")


def q8(n: NexmarkInput) -> Any:
    """Monitor new users: people who created an auction in the 10 s tumbling
    window in which they registered."""
    sl = _sl()
    w = sl.windows.tumbling("10s")
    p = n.person.key_by("id", "name").window(w).agg(_n=sl.agg.count())
    a = n.auction.key_by("seller").window(w).agg(_n=sl.agg.count())
    return (
        p.select("id", "name", "window_start", "window_end")
        .window_join(
            a.select("seller", "window_start", "window_end"), left_on="id", right_on="seller"
        )
        .select("id", "name", pl.col("window_start").alias("stime"))
    )


def q11(n: NexmarkInput) -> Any:
    """User sessions: bids per bidder per session (10 s gap)."""
    sl = _sl()
    return (
        n.bid.key_by("bidder")
        .window(sl.windows.session("10s"))
        .agg(bid_count=sl.agg.count())
        .select(
            "bidder",
            "bid_count",
            pl.col("window_start").alias("starttime"),
            pl.col("window_end").alias("endtime"),
        )
    )


def q12(n: NexmarkInput) -> Any:
    """Processing-time windows: bids per bidder per 10 s of processing time."""
    sl = _sl()
    return (
        n.bid.key_by("bidder")
        .window(sl.windows.tumbling("10s", time="processing"))
        .agg(bid_count=sl.agg.count())
        .select(
            "bidder",
            "bid_count",
            pl.col("window_start").alias("starttime"),
            pl.col("window_end").alias("endtime"),
        )
    )


def side_input() -> pl.DataFrame:
    """q13's side input table (``key`` BIGINT, ``value`` VARCHAR)."""
    return pl.read_csv(SIDE_INPUT, schema={"key": pl.Int64, "value": pl.Utf8})


def q13(n: NexmarkInput) -> Any:
    """Bounded side input join: bids joined with a static table on ``auction % 10000``."""
    return (
        n.bid.with_columns((pl.col("auction") % 10_000).alias("_key"))
        .lookup_join(side_input(), left_on="_key", right_on="key")
        .select("auction", "bidder", "price", "date_time", "value")
    )


def q14(n: NexmarkInput) -> Any:
    """Calculation: euro prices in a range, day/night, and the number of 'c' in ``extra``."""
    h = pl.col("date_time").dt.hour()
    return (
        n.bid.with_columns((pl.col("price") * 0.908).alias("_p"))
        .filter((pl.col("_p") > 1_000_000) & (pl.col("_p") < 50_000_000))
        .select(
            "auction",
            "bidder",
            pl.col("_p").alias("price"),
            pl.when((h >= 8) & (h <= 18))
            .then(pl.lit("dayTime"))
            .when((h <= 6) | (h >= 20))
            .then(pl.lit("nightTime"))
            .otherwise(pl.lit("otherTime"))
            .alias("bid_time_type"),
            "date_time",
            "extra",
            pl.col("extra").str.count_matches("c", literal=True).cast(pl.Int64).alias("c_counts"),
        )
    )


def q20(n: NexmarkInput) -> Any:
    """Expand bid with auction: bids joined with their category-10 auction."""
    b = n.bid.select(
        "auction",
        "bidder",
        "price",
        "channel",
        "url",
        pl.col("date_time").alias("bid_date_time"),
        pl.col("extra").alias("bid_extra"),
    )
    a = n.auction.filter(pl.col("category") == 10).select(
        "id",
        "item_name",
        "description",
        "initial_bid",
        "reserve",
        pl.col("date_time").alias("auction_date_time"),
        "expires",
        "seller",
        "category",
        pl.col("extra").alias("auction_extra"),
    )
    return b.join(a, left_on="auction", right_on="id")


#: q21's channel ids of the four hot channels (by lower-case name)
_HOT_CHANNEL_IDS = {"apple": "0", "google": "1", "facebook": "2", "baidu": "3"}


def q21(n: NexmarkInput) -> Any:
    """Add channel id: from the channel name or parsed from the url."""
    # REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2), with the two branches of
    # the alternation as two regexes that start with a literal (twice as fast)
    url = pl.col("url")
    parsed = (
        pl.when(url.str.starts_with("channel_id="))
        .then(url.str.extract(r"^channel_id=([^&]*)", 1))
        .otherwise(url.str.extract(r"&channel_id=([^&]*)", 1))
    )
    hot = pl.col("channel").str.to_lowercase().replace_strict(_HOT_CHANNEL_IDS, default=None)
    # each expression once per row (the SQL repeats them in WHERE and SELECT)
    return (
        n.bid.select(
            "auction", "bidder", "price", "channel", hot.alias("_hot"), parsed.alias("_id")
        )
        .filter(pl.col("_hot").is_not_null() | pl.col("_id").is_not_null())
        .select(
            "auction", "bidder", "price", "channel", pl.coalesce("_hot", "_id").alias("channel_id")
        )
    )


def q22(n: NexmarkInput) -> Any:
    """Get URL directories: ``SPLIT_INDEX(url, '/', 3..5)``.

    ``split_exact`` cuts the first six pieces into a struct (missing ones null,
    the rest of the string dropped): the same values as indexing the list of
    all pieces, without building that list (1.7x faster)."""
    parts = pl.col("url").str.split_exact("/", 5).struct
    return n.bid.select(
        "auction",
        "bidder",
        "price",
        "channel",
        parts.field("field_3").alias("dir1"),
        parts.field("field_4").alias("dir2"),
        parts.field("field_5").alias("dir3"),
    )


def q10_stream(n: NexmarkInput) -> Any:
    """Log to file system: bids with their day and ``HH:mm`` partition columns."""
    return n.bid.select(
        "auction",
        "bidder",
        "price",
        "date_time",
        "extra",
        pl.col("date_time").dt.strftime("%Y-%m-%d").alias("dt"),
        pl.col("date_time").dt.strftime("%H:%M").alias("hm"),
    )


def _q10_sink(stream: Any, out: Path) -> None:
    stream.sink(_sl().sinks.csv(out, partition_by=["dt", "hm"]), name="result")


QUERIES: dict[str, Query] = {
    q.name: q
    for q in [
        Query(
            "q0",
            "pass through",
            q0,
            columns={"bid": ["auction", "bidder", "price", "date_time", "extra"]},
        ),
        Query(
            "q1",
            "currency conversion",
            q1,
            columns={"bid": ["auction", "bidder", "price", "date_time", "extra"]},
        ),
        Query("q2", "selection", q2, columns={"bid": ["auction", "price", "date_time"]}),
        Query(
            "q3",
            "local item suggestion (regular join)",
            q3,
            columns={
                "auction": ["id", "seller", "category", "date_time"],
                "person": ["id", "name", "city", "state", "date_time"],
            },
        ),
        Query("q4", "average price per category (join, max, updating average)", q4),
        Query("q5", "hot items (sliding windows)", q5, columns={"bid": ["auction", "date_time"]}),
        Query(
            "q6",
            "average selling price by seller (join, closed auctions, last 11 per seller)",
            q6,
            columns={
                "auction": ["id", "seller", "date_time", "expires"],
                "bid": ["auction", "price", "date_time"],
            },
        ),
        Query(
            "q7",
            "highest bid (tumbling window + interval join)",
            q7,
            columns={"bid": ["auction", "bidder", "price", "date_time", "extra"]},
        ),
        Query(
            "q8",
            "monitor new users (window join)",
            q8,
            columns={"person": ["id", "name", "date_time"], "auction": ["seller", "date_time"]},
        ),
        Query("q9", "winning bids (join, top-1 per auction)", q9),
        Query(
            "q10",
            "log to file system (partitioned)",
            q10_stream,
            sink=_q10_sink,
            columns={"bid": ["auction", "bidder", "price", "date_time", "extra"]},
        ),
        Query(
            "q11", "user sessions (session windows)", q11, columns={"bid": ["bidder", "date_time"]}
        ),
        Query(
            "q12",
            "processing-time windows",
            q12,
            deterministic=False,
            columns={"bid": ["bidder", "date_time"]},
        ),
        Query(
            "q13",
            "bounded side input join (lookup join)",
            q13,
            columns={"bid": ["auction", "bidder", "price", "date_time"]},
        ),
        Query(
            "q14",
            "calculation",
            q14,
            columns={"bid": ["auction", "bidder", "price", "date_time", "extra"]},
        ),
        Query(
            "q15",
            "bidding statistics per day",
            q15,
            columns={"bid": ["auction", "bidder", "price", "date_time"]},
        ),
        Query(
            "q16",
            "channel statistics per day",
            q16,
            columns={"bid": ["auction", "bidder", "price", "channel", "date_time"]},
        ),
        Query(
            "q17",
            "auction statistics per day",
            q17,
            columns={"bid": ["auction", "price", "date_time"]},
        ),
        Query("q18", "last bid per bidder and auction (top-1)", q18),
        Query("q19", "top 10 bids per auction (top-N)", q19),
        Query("q20", "expand bid with auction (regular join)", q20),
        Query(
            "q21",
            "add channel id",
            q21,
            columns={"bid": ["auction", "bidder", "price", "channel", "url", "date_time"]},
        ),
        Query(
            "q22",
            "get URL directories",
            q22,
            columns={"bid": ["auction", "bidder", "price", "channel", "url", "date_time"]},
        ),
    ]
}


def get(name: str) -> Query:
    """The query called ``name`` (``"q5"`` or ``"5"``)."""
    key = name.lower()
    if not key.startswith("q"):
        key = "q" + key
    if key not in QUERIES:
        raise ConfigError(f"nexmark: unknown query {name!r}; available: {', '.join(QUERIES)}")
    return QUERIES[key]


__all__ = [
    "QUERIES",
    "SIDE_INPUT",
    "WATERMARK",
    "NexmarkInput",
    "Query",
    "QueryRun",
    "get",
    "run_query",
]
