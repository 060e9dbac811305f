"""The keyed step of Nexmark q6 (average selling price by seller)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sluice.operators.process import KeyedProcessFunction, ProcessContext

#: winning prices averaged per row: the current one and up to 10 preceding
FRAME = 11


class ClosedAuctionAverage(KeyedProcessFunction):
    """Keyed by ``seller``, fed the candidate bids ``{id, expires, price}``
    (``expires`` in ms) of the seller's auctions.

    Each open auction keeps its highest price so far, grouped by ``expires``
    (map state ``open``: ``expires -> {id: price}``) with one event-time timer
    per ``expires``. When the watermark reaches ``expires`` the group's auctions
    have closed: in ``id`` order, each emits ``{seller, avg_price}``, the
    truncated average of its price and the (up to) 10 preceding closed
    auctions' prices (value state ``last``). Timers fire in time order, so rows
    come out in close order ``(expires, id)`` whatever the parallelism. A bid
    that arrives after its auction closed is dropped (late data).
    """

    def process_element(self, row: dict[str, Any], ctx: ProcessContext) -> None:
        expires = row["expires"]
        if expires <= ctx.watermark:
            return
        auctions = ctx.map_state("open")
        group: dict[int, int] | None = auctions.get(expires)
        if group is None:
            ctx.register_event_time_timer(expires)
            group = {}
        aid, price = row["id"], row["price"]
        held = group.get(aid)
        if held is None or price > held:
            group[aid] = price
            auctions.put(expires, group)  # a RocksDB backend saves only what is put

    def on_timer(self, timestamp: int, ctx: ProcessContext) -> Iterator[dict[str, Any]]:
        auctions = ctx.map_state("open")
        group: dict[int, int] = auctions.get(timestamp) or {}
        auctions.remove(timestamp)
        last = ctx.value_state("last")
        prices: tuple[int, ...] = last.value() or ()
        for aid in sorted(group):
            prices = (*prices, group[aid])[-FRAME:]
            yield {"seller": ctx.key, "avg_price": sum(prices) // len(prices)}
        # the next row needs only the 10 preceding prices
        last.update(prices[1 - FRAME :])
