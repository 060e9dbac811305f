"""What an operator subtask hands to a checkpoint, and gets back on restore.

State is a set of named tables (Polars DataFrames, written as Arrow IPC files).
*Keyed* tables carry the operator's key columns: the checkpoint adds each row's
key group, so that a restore at another parallelism gives every new subtask
exactly the rows of its key groups. Other tables (source positions, sink
transactions) are merged from all old subtasks; the operator picks its part.

A table may also be :class:`Deferred`: a function that builds it later, on the
checkpoint's writer thread, from a copy of the state captured at the barrier
(a RocksDB checkpoint, for instance). That is how state on disk is snapshotted
asynchronously; Polars frames are immutable, so in-memory state is captured by
reference and needs no deferral.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from sluice.runtime.messages import MIN_TIME


class Deferred:
    """Tables computed off the job's thread: ``build()`` returns every table of
    the group at once (one scan of the captured state), ``release()`` drops the
    captured copy. Each table of a snapshot names its group and its label.

    >>> d = Deferred(lambda: {"t": pl.DataFrame({"a": [1]})})
    >>> d.table("t").height, d.table("other")
    (1, None)
    """

    def __init__(
        self,
        build: Callable[[], dict[str, pl.DataFrame]],
        release: Callable[[], None] | None = None,
    ) -> None:
        self._build = build
        self._release = release
        self._tables: dict[str, pl.DataFrame] | None = None

    def tables(self) -> dict[str, pl.DataFrame]:
        if self._tables is None:
            try:
                self._tables = self._build()
            finally:
                self.release()
        return self._tables

    def table(self, label: str) -> pl.DataFrame | None:
        return self.tables().get(label)

    def release(self) -> None:
        rel, self._release = self._release, None
        if rel is not None:
            rel()


@dataclass
class Snapshot:
    """State of one operator subtask (or, on restore, of the merged old subtasks)."""

    keyed: dict[str, pl.DataFrame] = field(default_factory=dict)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    #: JSON-serializable extras (source positions, sink transactions).
    meta: dict[str, Any] = field(default_factory=dict)
    watermark: int = MIN_TIME
    #: Keyed tables still to be built (see :class:`Deferred`); ``materialize``
    #: moves them into ``keyed``.
    deferred: list[Deferred] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.keyed and not self.tables and not self.meta and not self.deferred

    def materialize(self) -> Snapshot:
        """Build the deferred tables now (on the calling thread); returns self."""
        for d in self.deferred:
            for name, df in d.tables().items():
                if df.height:
                    self.keyed[name] = df
        self.deferred = []
        return self

    def discard(self) -> None:
        """Release the captured copies of deferred tables that will not be built."""
        for d in self.deferred:
            d.release()
