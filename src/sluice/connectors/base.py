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

    # -- checkpoints (replayable sources) -------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The reader's position as a JSON-serializable dict, taken between polls
        when a checkpoint barrier is injected. Replayable readers override it."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Continue from a position returned by :meth:`snapshot` (called after
        :meth:`open`, before the first poll)."""


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

    #: Set by the runtime before :meth:`open` when the job checkpoints: the
    #: writer must then publish output only in :meth:`commit` (two-phase commit).
    transactional: bool = False

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make everything written so far durable/visible."""

    def close(self) -> None:
        """Flush and release resources; called on end of stream and on stop.
        A transactional writer publishes nothing here that was not committed."""
        self.flush()

    # -- two-phase commit -------------------------------------------------------------
    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        """Phase 1, at the checkpoint barrier: make everything written so far
        durable but not yet visible, and return what :meth:`commit` needs
        (JSON-serializable; stored in the checkpoint)."""
        self.flush()
        return {}

    def commit(self, checkpoint_id: int, txn: dict[str, Any]) -> None:  # noqa: B027
        """Phase 2, once checkpoint ``checkpoint_id`` is complete: publish the
        output pre-committed for it. Must be idempotent (it is repeated after a
        crash between the checkpoint and the commit)."""


class Sink(ABC):
    """Where a stream's results go."""

    name: str = "sink"
    #: Whether the sink takes part in two-phase commit (exactly-once output).
    #: Sinks that cannot are at-least-once, and a checkpointing job says so.
    exactly_once: bool = False

    def recover(self, committed: list[dict[str, Any]]) -> None:  # noqa: B027
        """Called once before the writers are created when a job restores a
        checkpoint: publish the transactions pre-committed for that checkpoint
        (``committed``: the :meth:`SinkWriter.pre_commit` results of all old
        subtasks; already-published ones must be skipped) and discard any
        output written after it."""

    #: A sink that must run as a single subtask (one output file, stdout) sets this to 1.
    max_parallelism: int | None = None

    @abstractmethod
    def create_writer(self, subtask: int, parallelism: int) -> SinkWriter:
        """Make the writer of subtask ``subtask`` of ``parallelism``."""
