"""Window assigners and triggers (what users pass to ``.window(...)``).

Semantics follow Flink (docs/event-time.md): windows are ``[start, end)`` in
milliseconds; ``start(t, s) = t - (t - offset + s) mod s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import Literal

import polars as pl

from sluice.errors import ConfigError
from sluice.time.durations import Duration, parse_duration

TimeMode = Literal["event", "processing"]


@dataclass(frozen=True)
class Trigger:
    """When to emit a window's current result besides the final firing.

    ``every_ms``: periodically in processing time; ``on_update``: after every
    batch that changed the window; ``count``: every ``count`` elements (global
    windows).
    """

    every_ms: int | None = None
    on_update: bool = False
    count: int | None = None


class triggers:
    """Early-firing and global-window triggers."""

    @staticmethod
    def every(interval: Duration) -> Trigger:
        """Fire periodically in processing time.

        >>> triggers.every("500ms").every_ms
        500
        """
        return Trigger(every_ms=parse_duration(interval, what="trigger interval", allow_zero=False))

    @staticmethod
    def on_update() -> Trigger:
        """Fire after every batch that changed the window.

        >>> triggers.on_update().on_update
        True
        """
        return Trigger(on_update=True)

    @staticmethod
    def count(n: int) -> Trigger:
        """Fire every ``n`` elements of a key (global windows).

        >>> triggers.count(100).count
        100
        """
        if n < 1:
            raise ConfigError(f"count trigger: n must be >= 1, got {n}")
        return Trigger(count=n)


@dataclass(frozen=True)
class WindowSpec:
    """Base of all window kinds."""

    time: TimeMode = "event"


@dataclass(frozen=True)
class Tumbling(WindowSpec):
    size_ms: int = 0
    offset_ms: int = 0


@dataclass(frozen=True)
class Sliding(WindowSpec):
    size_ms: int = 0
    slide_ms: int = 0
    offset_ms: int = 0


@dataclass(frozen=True)
class Session(WindowSpec):
    gap_ms: int | None = None
    gap_expr: pl.Expr | None = None


@dataclass(frozen=True)
class Count(WindowSpec):
    size: int = 0
    slide: int = 0

    @property
    def pane(self) -> int:
        return gcd(self.size, self.slide)


@dataclass(frozen=True)
class Global(WindowSpec):
    trigger: Trigger | None = None
    purge: bool = False


def _time_mode(time: str) -> TimeMode:
    if time not in ("event", "processing"):
        raise ConfigError(f"window time must be 'event' or 'processing', got {time!r}")
    return time  # type: ignore[return-value]


class windows:
    """Window kinds."""

    @staticmethod
    def tumbling(size: Duration, *, offset: Duration = 0, time: str = "event") -> Tumbling:
        """Fixed, non-overlapping windows of ``size``.

        >>> windows.tumbling("1m").size_ms
        60000
        """
        s = parse_duration(size, what="window size", allow_zero=False)
        return Tumbling(_time_mode(time), s, parse_duration(offset, what="window offset") % s)

    @staticmethod
    def sliding(
        size: Duration, slide: Duration, *, offset: Duration = 0, time: str = "event"
    ) -> Sliding:
        """Windows of ``size`` starting every ``slide`` (hopping windows); an
        event belongs to about ``size / slide`` windows.

        >>> windows.sliding("10s", "2s").slide_ms
        2000
        """
        s = parse_duration(size, what="window size", allow_zero=False)
        sl = parse_duration(slide, what="window slide", allow_zero=False)
        if sl > s:
            raise ConfigError(
                f"sliding window: slide ({slide!r}) is larger than size ({size!r}); "
                "events between windows would be dropped - use slide <= size"
            )
        return Sliding(_time_mode(time), s, sl, parse_duration(offset, what="window offset") % sl)

    @staticmethod
    def session(gap: Duration | pl.Expr, *, time: str = "event") -> Session:
        """Per-key sessions closed by ``gap`` of inactivity. ``gap`` may be a
        Polars expression evaluated per event (milliseconds) for dynamic gaps.

        >>> windows.session("30m").gap_ms
        1800000
        """
        if isinstance(gap, pl.Expr):
            return Session(_time_mode(time), None, gap)
        return Session(_time_mode(time), parse_duration(gap, what="session gap", allow_zero=False))

    @staticmethod
    def count(size: int, slide: int | None = None) -> Count:
        """Per-key windows of ``size`` events; with ``slide``, fire every ``slide``
        events over the last ``size`` events (Flink ``countWindow(size, slide)``).

        >>> windows.count(100).size
        100
        """
        if size < 1 or (slide is not None and slide < 1):
            raise ConfigError(f"count window: size and slide must be >= 1, got {size}, {slide}")
        return Count("event", size, slide or size)

    @staticmethod
    def global_(trigger: Trigger, *, purge: bool = False) -> Global:
        """One window per key, emitted only when ``trigger`` fires.
        ``purge=True`` clears the window after each firing. With ``every`` or
        ``on_update`` triggers the window also fires once at end of input; with a
        ``count`` trigger, rows after the last firing are not emitted (Flink's
        ``GlobalWindows`` + ``CountTrigger``). ``window_start``/``window_end``
        are null.

        >>> windows.global_(triggers.count(10)).trigger.count
        10
        """
        return Global("event", trigger, purge)
