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

With a TTL a key's top-N is forgotten ``ttl`` after the latest event time of
a row written to it (a row that entered the top-N), by the watermark, or
``ttl`` after that row's arrival on the processing-time clock when the stream
has no event time: Flink's state TTL counted from the last write. A forgotten
top-N is never ranked against again, even before it is cleaned up; the key's
next rows fill its slots from rank 1 (the old rows of slots not filled again
stay downstream, as nothing is deleted).
"""

from __future__ import annotations

import polars as pl

from sluice.errors import ConfigError
from sluice.operators.base import Operator
from sluice.runtime.messages import MAX_TIME, MIN_TIME, TIME
from sluice.state.snapshot import Snapshot

SEQ, RANK, PREV, HASH = "__seq", "__rank", "__prev_rank", "__key_hash"
WRITTEN = "__written"  # TTL: the event time (or arrival time) of a row in the top-N
_SEED = 0x51CE


def _key_hash(keys: list[str]) -> pl.Expr:
    return pl.struct(keys).hash(_SEED).alias(HASH)


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
    """Keeps the top ``n`` rows per key and emits the slots that changed.

    The ranking works on a narrow *index* (key and sort columns, ``__seq``,
    ``__rank`` and a 64-bit hash of the key); the other columns of the rows in the top-N live in a *payload*
    table keyed by ``__seq``, appended to as rows enter and compacted when half
    of it is rows that left. So a batch copies only the narrow index, never the
    wide rows (strings) of the whole state. The index rows of the keys a batch
    touches are found by their key hash (a hash-set probe, several times
    cheaper than joining the index with the batch's keys); a collision only
    brings another key's rows along, which are ranked again unchanged.
    """

    def __init__(
        self,
        name: str,
        keys: list[str],
        n: int,
        by: list[str],
        descending: list[bool],
        nulls_last: list[bool],
        rank: str | None,
        ttl_ms: int | None = None,
        event_time: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.ttl = ttl_ms
        self.event_time = event_time
        self.next_expiry = MAX_TIME
        self.keys = keys
        self.n = n
        self.by = by
        self.descending = descending
        self.nulls_last = nulls_last
        self.rank = rank
        self.index: pl.DataFrame | None = None
        self.payload: list[pl.DataFrame] = []
        self._payload_rows = 0
        self.next_seq = 0
        self._checked = False
        self._narrow: list[str] = []

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
        self._narrow = list(dict.fromkeys([*self.keys, *self.by]))
        self._checked = True

    # -- TTL ---------------------------------------------------------------------------
    def _now(self) -> int:
        """The time TTL is measured against (watermark or processing clock)."""
        if self.event_time:
            return self.watermark
        assert self.ctx is not None
        return self.ctx.now()

    def _expired_keys(self, rows: pl.DataFrame, now: int) -> tuple[pl.DataFrame, int]:
        """The keys among ``rows`` (index rows) whose top-N has expired at ``now``,
        and the earliest expiry of the others."""
        assert self.ttl is not None
        last = rows.group_by(self.keys).agg(pl.col(WRITTEN).max() + self.ttl)
        gone = last.get_column(WRITTEN) <= now
        alive = last.get_column(WRITTEN).filter(~gone).min()
        nxt = MAX_TIME if alive is None else int(alive)  # type: ignore[arg-type]
        return last.filter(gone).select(self.keys), nxt

    def _expire(self, now: int) -> None:
        """Forget the keys whose TTL has passed at ``now``."""
        if self.index is None or not self.index.height:
            self.next_expiry = MAX_TIME
            return
        gone, self.next_expiry = self._expired_keys(self.index, now)
        if gone.height:
            self.metrics.add("keys_expired", gone.height)
            self.index = self.index.join(gone, on=self.keys, how="anti", nulls_equal=True)

    def on_watermark(self, time: int) -> None:
        if self.ttl is not None and self.event_time and self.next_expiry <= time < MAX_TIME:
            self._expire(time)

    def process_batch(self, batch: pl.DataFrame) -> None:
        if not self._checked:
            self._check(batch)
        h = batch.height
        start = self.next_seq  # rows with a smaller __seq were here before
        b = batch.with_columns(pl.int_range(start, start + h, dtype=pl.Int64).alias(SEQ))
        self.next_seq += h
        keys = self.keys
        bi = b.select(*self._narrow, SEQ)
        if self.ttl is not None:
            now = self._now()
            if self.next_expiry <= now:
                self._expire(now)  # an expired top-N is never ranked against
            if self.event_time:
                bi = bi.hstack([b.get_column(TIME).alias(WRITTEN)])
            else:
                bi = bi.with_columns(pl.lit(now, pl.Int64).alias(WRITTEN))
            lo = bi.get_column(WRITTEN).min()
            if lo is not None and int(lo) + self.ttl < self.next_expiry:  # type: ignore[arg-type]
                self.next_expiry = int(lo) + self.ttl  # type: ignore[arg-type]
        rest: pl.DataFrame | None = None
        retyped = False  # key types differ from the state's: hashes are redone below
        if self.index is not None and self.index.height:
            bi = align_nulls(bi, self.index)
            retyped = any(bi.schema[k] != self.index.schema[k] for k in keys)
        bi = bi.with_columns(_key_hash(keys))
        cand = bi
        if self.index is not None and self.index.height:
            old, rest = self._split_touched(bi)
            if old.height:
                cand = pl.concat([old.rename({RANK: PREV}), bi], how="diagonal_relaxed")
        top = self._rank(cand)
        # a slot changed when its row is new, or an old row that moved to it
        # (slots are never emptied, so no other change is possible)
        is_new = pl.col(SEQ) >= start
        if PREV in top.columns:
            changed = top.filter(is_new | (pl.col(PREV) != pl.col(RANK))).drop(PREV)
            top = top.drop(PREV)
        else:
            changed = top
        self.index = (
            top
            if rest is None or not rest.height
            else pl.concat([rest, top], how="vertical_relaxed")
        )
        if retyped:  # the key columns now have their common type: hash them as such
            self.index = self.index.with_columns(_key_hash(keys))
        entered = b.join(changed.filter(is_new).select(SEQ, RANK), on=SEQ, how="inner")
        if entered.height:
            self.payload.append(entered.drop(RANK))
            self._payload_rows += entered.height
        moved = changed.filter(~is_new).select(SEQ, RANK)
        if moved.height:
            wide = self._payload_frame().join(moved, on=SEQ, how="inner")
            out_rows = pl.concat([entered, wide.select(entered.columns)])
        else:
            out_rows = entered
        if self._payload_rows > 2 * self.index.height + 65_536:
            self._compact()
        cols = [c for c in batch.columns]
        if self.rank is None:
            # n == 1 (checked by the API): the upsert key is the key columns alone
            out = out_rows.select(cols)
        else:
            out = out_rows.select(*cols, pl.col(RANK).alias(self.rank))
        self.metrics.add("slots_updated", out.height)
        self.emit(out)

    def _rank(self, cand: pl.DataFrame) -> pl.DataFrame:
        """The rows of ``cand`` in the top ``n`` of their key, with their ``__rank``
        (ties by ``__seq``). Vectorized without a window function (``over`` is
        several times slower): for ``n == 1`` the first row of each key in sort
        order; otherwise sorted by key, then rank = position - the key's first
        position + 1."""
        keys = self.keys
        if self.n == 1:
            ordered = cand.sort(
                [*self.by, SEQ],
                descending=[*self.descending, False],
                nulls_last=[*self.nulls_last, False],
            )
            key = pl.struct(keys) if len(keys) > 1 else pl.col(keys[0])
            return ordered.filter(key.is_first_distinct()).with_columns(
                pl.lit(1, pl.Int64).alias(RANK)
            )
        k = len(keys)
        ordered = cand.sort(
            [*keys, *self.by, SEQ],
            descending=[False] * k + [*self.descending, False],
            nulls_last=[False] * k + [*self.nulls_last, False],
        )
        new_key = pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in keys])
        at = pl.int_range(pl.len(), dtype=pl.Int64)
        start = pl.when(new_key.fill_null(True)).then(at).otherwise(0).cum_max()
        return ordered.with_columns((at - start + 1).alias(RANK)).filter(pl.col(RANK) <= self.n)

    def _split_touched(self, bi: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The index rows of the keys in ``bi`` (and of keys whose hash collides
        with one of them), and the other rows."""
        index = self.index
        assert index is not None
        if all(bi.schema[k] == index.schema[k] for k in self.keys):
            hit = index.get_column(HASH).is_in(bi.get_column(HASH).unique().implode())
            return index.filter(hit), index.filter(~hit)
        # key types differ from the state's (the hashes would too): join on the keys
        touched = bi.select(self.keys).unique()
        old = index.join(touched, on=self.keys, how="semi", nulls_equal=True)
        return old, index.join(touched, on=self.keys, how="anti", nulls_equal=True)

    def _payload_frame(self) -> pl.DataFrame:
        if len(self.payload) > 1:
            self.payload = [pl.concat(self.payload, how="diagonal_relaxed")]
        return self.payload[0]

    def _compact(self) -> None:
        """Drop the payload of rows that left the top-N."""
        assert self.index is not None
        live = self._payload_frame().join(self.index.select(SEQ), on=SEQ, how="semi")
        self.payload = [live]
        self._payload_rows = live.height

    @property
    def state(self) -> pl.DataFrame | None:
        """The current top-N rows of every key (all columns, ``__seq``, ``__rank``)."""
        if self.index is None or not self.index.height:
            return None
        wide = self._payload_frame()
        kept = [SEQ, RANK, WRITTEN] if WRITTEN in self.index.columns else [SEQ, RANK]
        return wide.join(self.index.select(kept), on=SEQ, how="inner")

    def state_rows(self) -> int:
        """Rows held (at most ``n`` per key seen)."""
        return 0 if self.index is None else self.index.height

    def snapshot_state(self) -> Snapshot:
        snap = Snapshot(keys=self.keys, watermark=self.watermark)
        st = self.state
        if st is not None:
            snap.keyed["top"] = st
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        st = snapshot.keyed.get("top")
        if st is None or not st.height:
            return
        if not self._narrow:
            self._narrow = list(dict.fromkeys([*self.keys, *self.by]))
        # the rows come from the old subtasks, each with its own arrival numbers:
        # renumber them (a key's rows all come from one old subtask, so sorting by
        # the old numbers keeps each key's order) so that __seq identifies a row
        st = st.sort(SEQ).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(SEQ))
        if self.ttl is not None and WRITTEN not in st.columns:  # saved without a TTL
            # the rows were written at their event time (or, without one, now)
            at = pl.col(TIME) if self.event_time and TIME in st.columns else pl.lit(self._now())
            st = st.with_columns(at.cast(pl.Int64).alias(WRITTEN))
        elif self.ttl is None and WRITTEN in st.columns:
            st = st.drop(WRITTEN)
        ttl_cols = [WRITTEN] if self.ttl is not None else []
        # the column order of the index rows process_batch makes
        self.index = st.select(*self._narrow, SEQ, *ttl_cols, _key_hash(self.keys), RANK)
        if self.ttl is not None:
            _, self.next_expiry = self._expired_keys(self.index, MIN_TIME)
        self.payload = [st.drop(RANK, *ttl_cols)]
        self._payload_rows = st.height
        # rows arriving from now on come after every restored row of their key
        self.next_seq = st.height
