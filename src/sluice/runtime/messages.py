"""Control messages that travel in-band with data batches on every channel."""

from __future__ import annotations

from dataclasses import dataclass

#: Event time as integer milliseconds since the epoch.
MIN_TIME = -(2**63)
MAX_TIME = 2**63 - 1

#: Name of the internal event-time column (Int64 milliseconds) carried on every edge.
TIME = "__time"


@dataclass(frozen=True, slots=True)
class Watermark:
    """No more events with time <= ``time`` will arrive on this channel."""

    time: int


@dataclass(frozen=True, slots=True)
class Idle:
    """The channel is idle (``idle=True``) or active again (``idle=False``)."""

    idle: bool


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The channel will carry nothing more."""


@dataclass(frozen=True, slots=True)
class Barrier:
    """Checkpoint barrier ``checkpoint_id``: everything before it on a channel
    belongs to the checkpoint, everything after to the next one."""

    checkpoint_id: int
