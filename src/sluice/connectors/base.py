"""The two small base classes every connector implements.

A :class:`Source` describes where data comes from and makes :class:`SplitReader`
objects, one per independently readable part (a file, a slice of a table, a
partition of a log). The engine owns everything else: event-time extraction,
watermarks, idleness, schema checks, dead letters and batching. A split reader
only reads.

A :class:`Sink` makes one :class:`SinkWriter` per parallel subtask.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from sluice.errors import BadRecordError

OnError = Literal["raise", "dead_letter"]

#: Schema of the dead-letter stream produced by ``stream.dead_letters()``.
DEAD_LETTER_SCHEMA = {
    "source": pl.String,
    "file": pl.String,
    "line": pl.Int64,
    "reason": pl.String,
    "raw": pl.String,
}


@dataclass
class ReadBatch:
    """Rows read from one split, with where they came from (for error messages).

    ``lines`` gives, per row, its line number in ``file`` (1-based) or its row
    number in an in-memory source (0-based); when absent, row ``i`` is line
    ``first_line + i``.
    """

    data: pl.DataFrame
    file: str | None = None
    first_line: int = 0
    lines: np.ndarray | None = None

    def line_of(self, row: int) -> int:
        if self.lines is not None:
            return int(self.lines[row])
        return self.first_line + row


@dataclass
class ReaderContext:
    """What the engine gives a split reader: the source name and error policy."""

    source_name: str
    on_error: OnError = "raise"
    dead_letters: list[dict[str, Any]] = field(default_factory=list)

    def bad_record(
        self,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        raw: str | None = None,
    ) -> None:
        """Report one unreadable record: raise, or keep it for the dead-letter output."""
        if self.on_error == "raise":
            raise BadRecordError(self.source_name, reason, file=file, line=line, raw=raw)
        self.dead_letters.append(
            {"source": self.source_name, "file": file, "line": line, "reason": reason, "raw": raw}
        )

    def take_dead_letters(self) -> pl.DataFrame | None:
        if not self.dead_letters:
            return None
        df = pl.DataFrame(self.dead_letters, schema=DEAD_LETTER_SCHEMA)
        self.dead_letters = []
        return df


class SplitReader(ABC):
    """Reads one split. ``poll`` must not block for long: return ``None`` when
    nothing is available now, and set ``finished`` once the split is exhausted."""

    split_id: str = "0"
    finished: bool = False

    def open(self, ctx: ReaderContext) -> None:  # noqa: B027 - optional hook
        """Called once before the first poll."""

    @abstractmethod
    def poll(self, max_rows: int) -> ReadBatch | None:
        """Return up to about ``max_rows`` rows, or ``None`` if none are ready now."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and threads."""


class Source(ABC):
    """Where a stream's data comes from."""

    #: Name used in error messages and metrics.
    name: str = "source"
    #: Whether the source can re-read from a recorded position (needed for exactly-once).
    replayable: bool = True
    #: Whether the source ends by itself.
    bounded: bool = True
    #: Whether small reads are buffered (up to the linger time) into larger batches.
    #: Sources that already cut batches of a chosen size set this to False.
    coalesce: bool = True
    #: Upper bound on the number of subtasks that can read it (None: no bound).
    max_parallelism: int | None = None

    @abstractmethod
    def create_splits(self, parallelism: int) -> list[SplitReader]:
        """Return the splits to read; split ``i`` is read by subtask ``i % parallelism``."""

    def default_parallelism(self) -> int:
        return 1

    def discover_splits(self) -> list[SplitReader]:
        """For unbounded sources that find new splits while running (new files)."""
        return []


class SinkWriter(ABC):
    """Writes the batches of one sink subtask."""

    def open(self) -> None:  # noqa: B027 - optional hook
        """Called once before the first write."""

    @abstractmethod
    def write(self, batch: pl.DataFrame) -> None:
        """Write one batch (internal ``__`` columns already removed)."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make everything written so far durable/visible."""

    def close(self) -> None:
        """Flush and release resources; called on end of stream and on stop."""
        self.flush()


class Sink(ABC):
    """Where a stream's results go."""

    name: str = "sink"
    #: A sink that must run as a single subtask (one output file, stdout) sets this to 1.
    max_parallelism: int | None = None

    @abstractmethod
    def create_writer(self, subtask: int, parallelism: int) -> SinkWriter:
        """Make the writer of subtask ``subtask`` of ``parallelism``."""
