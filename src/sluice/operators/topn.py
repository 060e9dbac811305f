"""Top-N per key: Flink SQL's ``ROW_NUMBER() OVER (PARTITION BY keys ORDER BY
by) AS rank ... WHERE rank <= n`` over an append-only stream.

State is one Polars table with the current top ``n`` rows of every key, each
with its arrival number ``__seq`` and its rank ``__rank``. A batch is merged
into the top-N of the keys it touches in one go: the stored rows of those keys
are concatenated with the batch, sorted by ``(by..., __seq)``, numbered per
key and cut at ``n``. A slot ``(key, rank)`` changed when the row now in it is
new or moved there from another rank; only changed slots are emitted, so the output is an *upsert stream* keyed by ``(keys..., rank)``.

Ordering follows Flink: rows with equal sort values rank in arrival order
(earlier first, as Flink's ``AppendOnlyTopNFunction`` appends a new row after
the equal ones), and nulls sort as the smallest value (Flink's default null
collation ``LOW``: first when ascending, last when descending) unless
``nulls_last`` says otherwise. On an append-only input a slot is never
emptied, so no deletions are ever needed.
"""

from __future__ import annotations

import polars as pl

from sluice.errors import ConfigError
from sluice.operators.base import Operator
from sluice.runtime.messages import TIME
from sluice.state.snapshot import Snapshot

SEQ, RANK, PREV = "__seq", "__rank", "__prev_rank"


def align_nulls(df: pl.DataFrame, like: pl.DataFrame) -> pl.DataFrame:
    """Give columns of type Null (a batch where a column held only nulls) the
    type they have in ``like``, so that joins with the state line up."""
    casts = {
        c: like.schema[c]
        for c, dt in df.schema.items()
        if dt == pl.Null and c in like.columns and like.schema[c] != pl.Null
    }
    return df.cast(casts) if casts else df  # type: ignore[arg-type]


class TopNOperator(Operator):
    """Keeps the top ``n`` rows per key and emits the slots that changed."""

    def __init__(
        self,
        name: str,
        keys: list[str],
        n: int,
        by: list[str],
        descending: list[bool],
        nulls_last: list[bool],
        rank: str | None,
    ) -> None:
        super().__init__()
        self.name = name
        self.keys = keys
        self.n = n
        self.by = by
        self.descending = descending
        self.nulls_last = nulls_last
        self.rank = rank
        self.state: pl.DataFrame | None = None
        self.next_seq = 0
        self._checked = False

    def _check(self, batch: pl.DataFrame) -> None:
        shown = [c for c in batch.columns if c != TIME]
        for what, cols in (("key", self.keys), ("sort", self.by)):
            for c in cols:
                if c not in batch.columns:
                    raise ConfigError(
                        f"top_n: the input has no {what} column {c!r} (its columns: {shown})"
                    )
        if self.rank is not None and self.rank in batch.columns:
            raise ConfigError(
                f"top_n: the rank column {self.rank!r} is already an input column; "
                "pass another name with rank=..."
            )
        self._checked = True

    def process_batch(self, batch: pl.DataFrame) -> None:
        if not self._checked:
            self._check(batch)
        h = batch.height
        b = batch.with_columns(
            pl.int_range(self.next_seq, self.next_seq + h, dtype=pl.Int64).alias(SEQ)
        )
        self.next_seq += h
        keys = self.keys
        start = self.next_seq - h  # rows with a smaller __seq were here before
        rest: pl.DataFrame | None = None
        cand = b
        if self.state is not None and self.state.height:
            touched = align_nulls(b.select(keys).unique(), self.state)
            old = self.state.join(touched, on=keys, how="semi", nulls_equal=True)
            rest = self.state.join(touched, on=keys, how="anti", nulls_equal=True)
            if old.height:
                cand = pl.concat([old.rename({RANK: PREV}), b], how="diagonal_relaxed")
        top = (
            cand.sort(
                [*self.by, SEQ],
                descending=[*self.descending, False],
                nulls_last=[*self.nulls_last, False],
            )
            .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(keys).alias(RANK))
            .filter(pl.col(RANK) <= self.n)
        )
        # a slot changed when its row is new, or an old row that moved to it
        # (slots are never emptied, so no other change is possible)
        if PREV in top.columns:
            changed = top.filter((pl.col(SEQ) >= start) | (pl.col(PREV) != pl.col(RANK)))
            top = top.drop(PREV)
        else:
            changed = top
        if rest is not None and rest.height:
            top = pl.concat([rest, top], how="diagonal_relaxed")
        self.state = top
        if self.rank is None:
            # n == 1 (checked by the API): the upsert key is the key columns alone
            out = changed.select(batch.columns)
        else:
            out = changed.select(*batch.columns, pl.col(RANK).alias(self.rank))
        self.metrics.add("slots_updated", out.height)
        self.emit(out)

    def state_rows(self) -> int:
        """Rows held (at most ``n`` per key seen)."""
        return 0 if self.state is None else self.state.height

    def snapshot_state(self) -> Snapshot:
        snap = Snapshot(keys=self.keys, watermark=self.watermark)
        if self.state is not None and self.state.height:
            snap.keyed["top"] = self.state
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        st = snapshot.keyed.get("top")
        self.state = st if st is not None and st.height else None
        if self.state is not None:
            # rows arriving from now on come after every restored row of their key
            mx = self.state.get_column(SEQ).max()
            self.next_seq = int(mx) + 1  # type: ignore[arg-type]
