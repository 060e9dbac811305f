"""The Nexmark input of a query: the person, auction and bid streams of one flow,
generated inside it or read from the Parquet files of ``sluice nexmark generate``.

>>> import sluice as sl
>>> from sluice.nexmark.inputs import NexmarkInput
>>> flow = sl.Flow("bids")
>>> out = sl.sinks.collect()
>>> NexmarkInput.generated(flow, events=1_000).bid.select("auction", "price").sink(out)
>>> _ = flow.run()
>>> out.to_polars().columns
['auction', 'price']
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError

#: nexmark-flink's watermark: ``date_time - 4 s``.
WATERMARK = "4s"

#: the streams, named as their Parquet files (``<kind>.parquet``)
STREAMS = ("person", "auction", "bid")


class NexmarkInput:
    """The three Nexmark streams of one flow, created on first use.

    :meth:`generated` generates events inside the flow (one source per kind of
    event used); :meth:`files`
    reads the Parquet files written by ``sluice nexmark generate``.
    """

    def __init__(self, flow: Any, make: Callable[[str], Any]) -> None:
        self.flow = flow
        self._make = make
        self._cache: dict[str, Any] = {}

    @classmethod
    def generated(
        cls,
        flow: Any,
        *,
        events: int,
        seed: int = 0,
        rate: float | None = None,
        max_rate: float | None = None,
        columns: dict[str, list[str]] | None = None,
    ) -> NexmarkInput:
        """Generate the events inside the flow: one per-kind source for each
        stream the query uses (the same events as nexmark-flink's single
        ``datagen`` table filtered into three views, without generating the kinds
        or, with ``columns``, the columns the query does not read)."""
        from sluice.nexmark.source import nexmark_streams

        streams = nexmark_streams(
            flow,
            events=events,
            seed=seed,
            rate=rate,
            max_rate=max_rate,
            watermark=WATERMARK,
            columns=columns,
        )
        return cls(flow, streams)

    @classmethod
    def files(
        cls,
        flow: Any,
        data_dir: str | os.PathLike[str],
        columns: dict[str, list[str]] | None = None,
    ) -> NexmarkInput:
        """Read ``person|auction|bid.parquet`` in ``data_dir``; ``columns`` reads
        only those columns of each stream (projection pushdown)."""
        from sluice.connectors.sources.files import parquet

        d = Path(data_dir)
        if not d.is_dir():
            raise ConfigError(f"nexmark: input directory {str(d)!r} does not exist")

        def make(kind: str) -> Any:
            p = d / f"{kind}.parquet"
            if not p.exists():
                raise ConfigError(
                    f"nexmark: {str(p)!r} is missing (write it with `sluice nexmark generate`)"
                )
            cols = (columns or {}).get(kind)
            return flow.source(
                parquet(p, columns=cols), name=kind, time="date_time", watermark=WATERMARK
            )

        return cls(flow, make)

    def _get(self, kind: str) -> Any:
        if kind not in self._cache:
            self._cache[kind] = self._make(kind)
        return self._cache[kind]

    @property
    def person(self) -> Any:
        return self._get("person")

    @property
    def auction(self) -> Any:
        return self._get("auction")

    @property
    def bid(self) -> Any:
        return self._get("bid")


__all__ = ["STREAMS", "WATERMARK", "NexmarkInput"]
