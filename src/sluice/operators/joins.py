"""What every join shares: key checks, the internal row layout, the output layout.

Inside a join operator each side's rows use an *internal layout*: the key
columns are renamed ``__jk0, __jk1, ...`` (so both sides join ``on`` the same
names and keyed snapshots hash the same columns the exchange hashed), the
event time becomes ``__lt`` (left) or ``__rt`` (right) and the right side's
other columns are prefixed ``__r.`` (so they never collide with the left's).
:class:`JoinLayout` turns batches into that layout and joined rows back into
the user's columns: left columns, then right columns except the right keys,
collisions renamed with ``suffix``; event time = max(left, right).

The operators live in ``join_regular``, ``join_interval``, ``join_window`` and
``join_lookup``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import polars as pl

from sluice.errors import ConfigError
from sluice.operators.base import Operator
from sluice.runtime.messages import TIME
from sluice.time.durations import Duration, parse_duration

LT, RT = "__lt", "__rt"
RPRE = "__r."
SIDE_NAMES = ("left", "right")


def key_names(n: int) -> list[str]:
    """Internal names of ``n`` key columns."""
    return [f"__jk{i}" for i in range(n)]


def resolve_keys(
    what: str,
    on: str | Sequence[str] | None,
    left_on: str | Sequence[str] | None,
    right_on: str | Sequence[str] | None,
    *,
    required: bool = True,
) -> tuple[list[str], list[str]]:
    """The key columns of both sides from ``on`` or ``left_on``/``right_on``."""

    def as_list(v: str | Sequence[str], arg: str) -> list[str]:
        out = [v] if isinstance(v, str) else list(v)
        if not all(isinstance(c, str) and c for c in out):
            raise ConfigError(f"{what}: {arg} must be a column name or a list of names, got {v!r}")
        return out

    if on is not None:
        if left_on is not None or right_on is not None:
            raise ConfigError(f"{what}: give either on= or left_on=/right_on=, not both")
        left = right = as_list(on, "on")
    elif left_on is not None or right_on is not None:
        if left_on is None or right_on is None:
            raise ConfigError(f"{what}: left_on= and right_on= go together; give both")
        left, right = as_list(left_on, "left_on"), as_list(right_on, "right_on")
    else:
        left = right = []
    if required and not left:
        raise ConfigError(
            f"{what}: give the key columns with on='k' (or left_on=/right_on= when names differ)"
        )
    if len(left) != len(right):
        raise ConfigError(
            f"{what}: {len(left)} key column(s) on the left ({left}) "
            f"but {len(right)} on the right ({right})"
        )
    for side, ks in (("left", left), ("right", right)):
        if len(set(ks)) != len(ks):
            raise ConfigError(f"{what}: {side} key columns repeat a name: {ks}")
    return left, right


def check_how(what: str, how: str, allowed: Sequence[str]) -> str:
    if how not in allowed:
        raise ConfigError(
            f"{what}: how must be one of {', '.join(map(repr, allowed))}; got {how!r}"
        )
    return how


def signed_duration(value: Duration, *, what: str) -> int:
    """A duration that may be negative (``"-5s"``, ``-5000``, ``-timedelta``)."""
    if isinstance(value, str) and value.strip().startswith("-"):
        return -parse_duration(value.strip()[1:], what=what)
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        return -parse_duration(-value, what=what)
    if isinstance(value, timedelta) and value < timedelta(0):
        return -parse_duration(-value, what=what)
    return parse_duration(value, what=what)


def canonical_key(col: pl.Series, what: str, side: str) -> pl.Series:
    """Cast a key column to the type every equal value hashes alike in:
    integers to Int64, floats to Float64, categoricals to String.

    Polars hashes -5 as Int32 and as Int64 differently, so both sides must be
    cast *before* the hash exchange for equal keys to meet in one subtask.
    """
    dt = col.dtype
    if dt.is_integer() and dt != pl.Int64:
        try:
            return col.cast(pl.Int64, strict=True)
        except pl.exceptions.InvalidOperationError as e:
            raise ConfigError(
                f"{what}: {side} key column {col.name!r} ({dt}) has values that do not fit "
                "Int64; cast it to a common type first"
            ) from e
    if dt == pl.Float32:
        return col.cast(pl.Float64)
    if isinstance(dt, pl.Categorical | pl.Enum):
        return col.cast(pl.String)
    return col


def check_columns(what: str, side: str, batch: pl.DataFrame, cols: Sequence[str]) -> None:
    for c in cols:
        if c not in batch.columns:
            shown = [x for x in batch.columns if x != TIME]
            raise ConfigError(
                f"{what}: the {side} input has no column {c!r} (its columns: {shown}); "
                f"check on=/left_on=/right_on="
            )


class KeyPrep(Operator):
    """Runs on each side before the hash exchange: checks the key columns
    exist and casts them to a canonical type (see :func:`canonical_key`)."""

    def __init__(self, what: str, side: str, keys: list[str]) -> None:
        super().__init__()
        self.what = what
        self.side = side
        self.keys = keys

    def process_batch(self, batch: pl.DataFrame) -> None:
        check_columns(self.what, self.side, batch, self.keys)
        casts = [canonical_key(batch.get_column(k), self.what, self.side) for k in self.keys]
        changed = [c for c, k in zip(casts, self.keys, strict=True) if c.dtype != batch.schema[k]]
        self.emit(batch.with_columns(changed) if changed else batch)


class JoinLayout:
    """Internal layout of both sides and the output columns of one join."""

    def __init__(
        self,
        what: str,
        left_keys: list[str],
        right_keys: list[str],
        suffix: str,
        *,
        extra_right_drop: Sequence[str] = (),
        extra_keys: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.what = what
        self.user_keys = (left_keys, right_keys)
        self.ik = key_names(len(left_keys))
        # extra join columns with the same name on both sides (window columns)
        self.extra = list(extra_keys)
        self.on = [*self.ik, *(internal for _, internal in self.extra)]
        self.suffix = suffix
        self.extra_right_drop = set(extra_right_drop)
        #: user columns (without event time) of each side, once seen
        self.cols: list[list[str] | None] = [None, None]
        #: internal schema of each side, once seen
        self.schema: list[dict[str, pl.DataType] | None] = [None, None]
        self.has_time: list[bool | None] = [None, None]
        self._out: list[pl.Expr] | None = None

    def _renames(self, side: int, columns: Sequence[str]) -> dict[str, str]:
        keys = self.user_keys[side]
        ren = {k: self.ik[i] for i, k in enumerate(keys)}
        for user, internal in self.extra:
            ren[user] = internal
        ren[TIME] = LT if side == 0 else RT
        if side == 1:
            for c in columns:
                if c not in ren:
                    ren[c] = RPRE + c
        return ren

    def internal(self, side: int, batch: pl.DataFrame) -> pl.DataFrame:
        """``batch`` of input ``side`` in the internal layout (checks it first)."""
        keys = self.user_keys[side]
        check_columns(self.what, SIDE_NAMES[side], batch, [*keys, *(u for u, _ in self.extra)])
        casts = [canonical_key(batch.get_column(k), self.what, SIDE_NAMES[side]) for k in keys]
        batch = batch.with_columns(casts)
        out = batch.rename(self._renames(side, batch.columns), strict=False)
        if self.cols[side] is None:
            self._learn(side, batch, out)
        return out

    def _learn(self, side: int, batch: pl.DataFrame, internal: pl.DataFrame) -> None:
        self.cols[side] = [c for c in batch.columns if c != TIME]
        self.has_time[side] = TIME in batch.columns
        self.schema[side] = dict(internal.schema)
        self._out = None
        other = self.schema[1 - side]
        if other is None:
            return
        mine = self.schema[side]
        assert mine is not None
        for i, ik in enumerate(self.ik):
            a, b = (mine[ik], other[ik]) if side == 0 else (other[ik], mine[ik])
            if a != b:
                lk, rk = self.user_keys[0][i], self.user_keys[1][i]
                raise ConfigError(
                    f"{self.what}: key columns {lk!r} (left, {a}) and {rk!r} (right, {b}) have "
                    f"types that cannot be compared; cast one side, e.g. "
                    f".with_columns(sl.col({rk!r}).cast(pl.{a}))"
                )

    def restore_schema(self, side: int, schema_frame: pl.DataFrame | None) -> None:
        """Learn a side's layout from its checkpointed (empty) schema table."""
        if schema_frame is None or not schema_frame.width:
            return
        user = self._user_of(side, schema_frame)
        self.cols[side] = [c for c in user if c != TIME]
        self.has_time[side] = TIME in user
        self.schema[side] = dict(schema_frame.schema)
        self._out = None

    def _user_of(self, side: int, internal: pl.DataFrame) -> list[str]:
        inv = {v: k for k, v in self._renames(side, []).items()}
        return [inv.get(c, c[len(RPRE) :] if c.startswith(RPRE) else c) for c in internal.columns]

    def schema_frame(self, side: int) -> pl.DataFrame | None:
        s = self.schema[side]
        return None if s is None else pl.DataFrame(schema=s)

    def empty(self, side: int) -> pl.DataFrame | None:
        return self.schema_frame(side)

    def event_time(self) -> bool:
        return bool(self.has_time[0]) and bool(self.has_time[1])

    def output_exprs(self, time: pl.Expr | None = None) -> list[pl.Expr]:
        """Select expressions from a joined internal frame to the user's columns.

        ``time`` overrides the output event time (default: max of both sides).
        Columns of a side never seen yet are left out (see docs/joins.md)."""
        if self._out is not None and time is None:
            return self._out
        exprs: list[pl.Expr] = []
        names: set[str] = set()
        lkeys, rkeys = self.user_keys
        lcols = self.cols[0]
        if lcols is None:  # left never seen here: its keys (and window columns) only
            lcols = [*lkeys, *(u for u, _ in self.extra)]
        ren0 = self._renames(0, lcols)
        for c in lcols:
            exprs.append(pl.col(ren0.get(c, c)).alias(c))
            names.add(c)
        rcols = self.cols[1] or []
        skip = set(rkeys) | {u for u, _ in self.extra} | self.extra_right_drop
        for c in rcols:
            if c in skip:
                continue
            name = c
            while name in names:
                name += self.suffix
            if name != c and name in rcols:
                raise ConfigError(
                    f"{self.what}: right column {c!r} renamed to {name!r} collides with "
                    "another right column; pick another suffix="
                )
            exprs.append(pl.col(RPRE + c).alias(name))
            names.add(name)
        if time is not None:
            exprs.append(time.alias(TIME))
            return exprs
        if self.event_time():
            exprs.append(pl.max_horizontal(LT, RT).alias(TIME))
        self._out = exprs
        return exprs

    def pad(self, rows: pl.DataFrame, side: int) -> pl.DataFrame:
        """Rows of ``side`` with the other side's (known) columns as nulls."""
        other = self.schema[1 - side]
        if not other:
            return rows
        add = [pl.lit(None, dt).alias(c) for c, dt in other.items() if c not in rows.columns]
        return rows.with_columns(add) if add else rows


def state_frame(chunks: list[pl.DataFrame]) -> pl.DataFrame | None:
    """One frame from appended chunks (kept as the only chunk afterwards)."""
    if not chunks:
        return None
    if len(chunks) == 1:
        return chunks[0]
    df = pl.concat(chunks, how="vertical_relaxed")
    chunks[:] = [df]
    return df
