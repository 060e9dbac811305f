"""State time-to-live: how long a keyed state entry lives after its last write.

Semantics follow Flink's state TTL with ``StateVisibility.NeverReturnExpired``:
the time-to-live counts from the last write (or the last read too, with
``update_on_read=True``), and an expired entry is never returned, even before
it is cleaned up. List state expires per element and map state per entry.

Flink has processing-time TTL only. Sluice adds **event-time TTL**, whose clock
is the operator's watermark: an entry written at event time ``t`` expires once
the watermark reaches ``t + ttl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sluice.errors import ConfigError
from sluice.time.durations import Duration, parse_duration

TtlTime = Literal["processing", "event"]


@dataclass(frozen=True)
class StateTtl:
    """The time-to-live of one state.

    >>> StateTtl.of("10m", "event")
    StateTtl(ttl_ms=600000, time='event', update_on_read=False)
    >>> StateTtl.of(None) is None
    True
    """

    ttl_ms: int
    time: TtlTime = "processing"
    update_on_read: bool = False

    @classmethod
    def of(
        cls,
        ttl: Duration | None,
        ttl_time: str = "processing",
        update_on_read: bool = False,
        *,
        state: str = "state",
    ) -> StateTtl | None:
        """Validate the user's ``ttl=``, ``ttl_time=``, ``update_on_read=``;
        ``None`` when the state has no time-to-live."""
        if ttl_time not in ("processing", "event"):
            raise ConfigError(
                f"{state}: ttl_time must be 'processing' or 'event', got {ttl_time!r}"
            )
        if ttl is None:
            if update_on_read:
                raise ConfigError(f"{state}: update_on_read=True needs a ttl (e.g. ttl='1h')")
            return None
        ms = parse_duration(ttl, what=f"{state} ttl", allow_zero=False)
        return cls(ms, ttl_time, bool(update_on_read))  # type: ignore[arg-type]

    def expired(self, written: int, now: int) -> bool:
        """Whether an entry last written (or read) at ``written`` is expired at ``now``."""
        return written + self.ttl_ms <= now

    def describe(self) -> str:
        extra = ", update_on_read=True" if self.update_on_read else ""
        return f"ttl={self.ttl_ms}ms, ttl_time={self.time!r}{extra}"


__all__ = ["StateTtl", "TtlTime"]
