"""Watermark strategies and the per-split watermark generator.

Semantics (see docs/event-time.md): with bounded out-of-orderness ``d`` a split
that has seen max event time ``m`` has watermark ``m - d - 1``. A split with no
records for the idle timeout is marked idle and leaves the minimum.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sluice.runtime.messages import MIN_TIME
from sluice.time.durations import Duration, parse_duration


@dataclass(frozen=True)
class WatermarkStrategy:
    """How a source derives watermarks from event times.

    >>> import sluice as sl
    >>> sl.bounded_out_of_orderness("5s").with_idleness("30s")
    WatermarkStrategy(out_of_orderness_ms=5000, idle_timeout_ms=30000)
    """

    out_of_orderness_ms: int = 0
    idle_timeout_ms: int | None = None

    def with_idleness(self, timeout: Duration) -> WatermarkStrategy:
        """Mark a split idle after ``timeout`` of processing time without records."""
        return replace(
            self, idle_timeout_ms=parse_duration(timeout, what="idle timeout", allow_zero=False)
        )


def bounded_out_of_orderness(max_delay: Duration) -> WatermarkStrategy:
    """Events may arrive up to ``max_delay`` behind the largest time seen so far.

    >>> bounded_out_of_orderness("5s").out_of_orderness_ms
    5000
    """
    return WatermarkStrategy(parse_duration(max_delay, what="out-of-orderness"))


def monotonous() -> WatermarkStrategy:
    """Event times never decrease within a split (out-of-orderness 0).

    >>> monotonous().out_of_orderness_ms
    0
    """
    return WatermarkStrategy(0)


class SplitWatermarks:
    """Tracks one split's watermark and idleness."""

    __slots__ = ("delay", "idle", "idle_timeout", "last_activity", "max_time", "watermark")

    def __init__(self, strategy: WatermarkStrategy, now: int) -> None:
        self.delay = strategy.out_of_orderness_ms
        self.idle_timeout = strategy.idle_timeout_ms
        self.max_time = MIN_TIME
        self.watermark = MIN_TIME
        self.idle = False
        self.last_activity = now

    def observe(self, batch_max_time: int, now: int) -> None:
        self.last_activity = now
        self.idle = False
        if batch_max_time > self.max_time:
            self.max_time = batch_max_time
            wm = batch_max_time - self.delay - 1
            if wm > self.watermark:
                self.watermark = wm

    def check_idle(self, now: int) -> bool:
        """Mark idle when the timeout has passed; return True if the state changed."""
        if self.idle or self.idle_timeout is None:
            return False
        if now - self.last_activity >= self.idle_timeout:
            self.idle = True
            return True
        return False
