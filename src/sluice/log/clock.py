"""The log's wall clock: milliseconds since the epoch, for segment ages and timestamps."""

from __future__ import annotations

import time


def now_ms() -> int:
    """The current wall-clock time in milliseconds since the Unix epoch.

    >>> now_ms() > 1_600_000_000_000
    True
    """
    return time.time_ns() // 1_000_000


__all__ = ["now_ms"]
