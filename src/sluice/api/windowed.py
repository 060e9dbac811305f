"""``WindowedStream`` and ``WindowResult``: windowed aggregation, from a
(keyed) stream with a window assigner to the windows' results and their late
rows.
"""

from __future__ import annotations

from sluice.api.stream import Stream
from sluice.errors import ConfigError
from sluice.operators import aggregations as _agg
from sluice.operators.base import Operator
from sluice.plan.logical import ExchangeKind
from sluice.time.durations import Duration, parse_duration
from sluice.time.windows import Count, Global, Trigger, WindowSpec


class WindowedStream:
    """A (keyed) stream with a window assigner; finish it with :meth:`agg`."""

    def __init__(
        self,
        stream: Stream,
        keys: list[str],
        spec: WindowSpec,
        allowed_lateness: Duration,
        trigger: Trigger | None,
    ) -> None:
        if not isinstance(spec, WindowSpec):
            raise ConfigError("window: pass a window from sl.windows (tumbling, sliding, ...)")
        if spec.time == "event" and not stream.event_time and not isinstance(spec, Count | Global):
            raise ConfigError(
                "event-time windows need a source with time=...; for processing-time "
                "windows pass time='processing' to the window"
            )
        if isinstance(spec, Global) and spec.trigger is None:
            raise ConfigError("global window: give a trigger (sl.triggers.count(n) or every(...))")
        self.stream = stream
        self.keys = keys
        self.spec = spec
        self.allowed_lateness = parse_duration(allowed_lateness, what="allowed lateness")
        self.trigger = trigger

    def agg(self, **aggs: _agg.Agg) -> WindowResult:
        """Aggregate each window: ``.agg(n=sl.agg.count(), total=sl.agg.sum("x"))``.

        Results carry the key columns, ``window_start``, ``window_end`` and one
        column per aggregation.
        """
        if not aggs:
            raise ConfigError("agg: give at least one aggregation, e.g. n=sl.agg.count()")
        for name in aggs:
            if name in self.keys or name in ("window_start", "window_end"):
                raise ConfigError(f"agg: output name {name!r} collides with a key or window column")
        keys = list(self.keys)
        spec = self.spec
        lateness = self.allowed_lateness
        trigger = self.trigger
        exchange: ExchangeKind = "hash" if keys else "rebalance"
        par = None if keys else 1
        if isinstance(spec, Count) or (
            isinstance(spec, Global) and spec.trigger is not None and spec.trigger.count
        ):
            from sluice.operators.count_windows import CountWindowOperator

            def factory(i: int, n: int) -> Operator:
                return CountWindowOperator("window", keys, spec, _agg.bind_all(aggs))

        else:
            from sluice.operators.windows import WindowOperator

            def factory(i: int, n: int) -> Operator:
                return WindowOperator("window", keys, spec, _agg.bind_all(aggs), lateness, trigger)

        node = self.stream._then(
            "window", factory, exchange=exchange, keys=keys, parallelism=par, max_parallelism=par
        )
        return WindowResult(self.stream.flow, node, event_time=True)


class WindowResult(Stream):
    """The results of a windowed aggregation; :meth:`late` gives its late rows."""

    def late(self) -> Stream:
        """Input rows that arrived after their window's allowed lateness and were
        not counted (the late side output)."""
        return Stream(self.flow, self.node, "late", event_time=True)
