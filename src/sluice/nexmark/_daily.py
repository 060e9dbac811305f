"""Nexmark q15, q16 and q17: daily bid, bidder and auction statistics in three
price ranks (nexmark-flink's ``COUNT(*) FILTER (WHERE price < 10000)`` and so on),
with the column builders they share. Registered in :mod:`sluice.nexmark.queries`.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from sluice.nexmark.inputs import NexmarkInput


def _sl() -> Any:
    import sluice as sl

    return sl


def _day(col: str = "window_start") -> pl.Expr:
    return pl.col(col).dt.strftime("%Y-%m-%d")


def _ranks() -> dict[str, pl.Expr]:
    p = pl.col("price")
    return {
        "r1": p < 10_000,
        "r2": (p >= 10_000) & (p < 1_000_000),
        "r3": p >= 1_000_000,
    }


def _rank_columns(distinct: bool) -> dict[str, pl.Expr]:
    """Columns that are non-null only in a price rank (FILTER (WHERE ...))."""
    cols: dict[str, pl.Expr] = {}
    for r, cond in _ranks().items():
        cols[f"{r}_one"] = pl.when(cond).then(pl.lit(1))
        if distinct:
            cols[f"{r}_bidder"] = pl.when(cond).then(pl.col("bidder"))
            cols[f"{r}_auction"] = pl.when(cond).then(pl.col("auction"))
    return cols


def _rank_aggs(distinct: bool) -> dict[str, Any]:
    agg = _sl().agg
    out: dict[str, Any] = {"total_bids": agg.count()}
    for i in (1, 2, 3):
        out[f"rank{i}_bids"] = agg.count(f"r{i}_one")
    if distinct:
        out["total_bidders"] = agg.count_distinct("bidder")
        for i in (1, 2, 3):
            out[f"rank{i}_bidders"] = agg.count_distinct(f"r{i}_bidder")
        out["total_auctions"] = agg.count_distinct("auction")
        for i in (1, 2, 3):
            out[f"rank{i}_auctions"] = agg.count_distinct(f"r{i}_auction")
    return out


_RANKED = [
    "total_bids",
    "rank1_bids",
    "rank2_bids",
    "rank3_bids",
    "total_bidders",
    "rank1_bidders",
    "rank2_bidders",
    "rank3_bidders",
    "total_auctions",
    "rank1_auctions",
    "rank2_auctions",
    "rank3_auctions",
]


def q15(n: NexmarkInput) -> Any:
    """Bidding statistics per day: bids, bidders and auctions in three price ranks."""
    sl = _sl()
    return (
        n.bid.with_columns(**_rank_columns(True))
        .window(sl.windows.tumbling("1d"))
        .agg(**_rank_aggs(True))
        .select(_day().alias("day"), *_RANKED)
    )


def q16(n: NexmarkInput) -> Any:
    """Channel statistics per day (q15 per channel, with the last minute seen)."""
    sl = _sl()
    return (
        n.bid.with_columns(
            pl.col("date_time").dt.strftime("%H:%M").alias("_minute"), **_rank_columns(True)
        )
        .key_by("channel")
        .window(sl.windows.tumbling("1d"))
        .agg(minute=sl.agg.max("_minute"), **_rank_aggs(True))
        .select("channel", _day().alias("day"), "minute", *_RANKED)
    )


def q17(n: NexmarkInput) -> Any:
    """Auction statistics per day: bids per rank and price statistics.

    ``avg_price`` is BIGINT as in Flink (``AVG`` of a BIGINT truncates)."""
    sl = _sl()
    return (
        n.bid.with_columns(**_rank_columns(False))
        .key_by("auction")
        .window(sl.windows.tumbling("1d"))
        .agg(
            **_rank_aggs(False),
            min_price=sl.agg.min("price"),
            max_price=sl.agg.max("price"),
            sum_price=sl.agg.sum("price"),
        )
        .select(
            "auction",
            _day().alias("day"),
            "total_bids",
            "rank1_bids",
            "rank2_bids",
            "rank3_bids",
            "min_price",
            "max_price",
            (pl.col("sum_price") // pl.col("total_bids")).alias("avg_price"),
            "sum_price",
        )
    )


__all__ = ["q15", "q16", "q17"]
