"""What an operator subtask hands to a checkpoint, and gets back on restore.

State is a set of named tables (Polars DataFrames, written as Arrow IPC files).
*Keyed* tables carry the operator's key columns: the checkpoint adds each row's
key group, so that a restore at another parallelism gives every new subtask
exactly the rows of its key groups. Other tables (source positions, sink
transactions) are merged from all old subtasks; the operator picks its part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from sluice.runtime.messages import MIN_TIME


@dataclass
class Snapshot:
    """State of one operator subtask (or, on restore, of the merged old subtasks)."""

    keyed: dict[str, pl.DataFrame] = field(default_factory=dict)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    #: JSON-serializable extras (source positions, sink transactions).
    meta: dict[str, Any] = field(default_factory=dict)
    watermark: int = MIN_TIME

    @property
    def empty(self) -> bool:
        return not self.keyed and not self.tables and not self.meta
