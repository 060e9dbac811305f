"""Session windows: numbering sessions, sessionizing a batch, rescuing late rows.

A session is a maximal run of a key's ``[start, end)`` intervals that touch
(as in Flink, windows that touch merge). These helpers work on tables with the
window columns ``__ws``/``__we`` and are used by the window operator's memory
and RocksDB paths alike.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from sluice.operators.partials import Partials
from sluice.operators.window_columns import SEQ, WE, WS


def with_session_ids(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """``df`` (sorted by keys and start) with ``__sid``, a session number: a new
    session starts when the start is after every earlier end of its key
    (windows that touch merge, as in Flink). Ids are unique over the table.

    The running maximum of ends per key is one global ``cum_max`` over ends
    shifted by ``key rank * span``, so that every key's values lie above the
    previous keys' (a per-key ``over`` is several times slower with many keys).

    >>> df = pl.DataFrame({"k": [1, 1, 1], "__ws": [0, 5, 20], "__we": [10, 15, 30]})
    >>> with_session_ids(df, ["k"])["__sid"].to_list()
    [1, 1, 2]
    """
    n = df.height
    if not keys or n == 0:
        return df.with_columns(_session_ids(keys))
    lo, hi = df.get_column(WE).min(), df.get_column(WE).max()
    span = int(hi) - int(lo) + 1  # type: ignore[arg-type]
    if span <= 0 or n * span >= 2**62:  # would overflow: the per-key expression
        return df.with_columns(_session_ids(keys))
    first = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys])
    first = first.fill_null(True)
    base = first.cast(pl.Int64).cum_sum() * span - int(lo)  # type: ignore[arg-type]
    prev_end = (pl.col(WE) + base).cum_max().shift(1)
    new = first | (pl.col(WS) + base > prev_end)
    return df.with_columns(new.cast(pl.Int64).cum_sum().alias("__sid"))


def _session_ids(keys: list[str]) -> pl.Expr:
    """Per-key session numbers (see :func:`with_session_ids`), as an expression."""
    prev_end = pl.col(WE).cum_max().shift(1)
    new = pl.col(WS) > prev_end
    if keys:
        prev_end = prev_end.over(keys)
        new = (pl.col(WS) > prev_end).fill_null(True)
        return new.cast(pl.Int64).cum_sum().over(keys).alias("__sid")
    return new.fill_null(True).cast(pl.Int64).cum_sum().alias("__sid")


def session_partials(
    rows: pl.DataFrame, keys: list[str], partials: Partials, seq: int
) -> pl.DataFrame:
    """One partial row per session of ``rows`` (one row per element, with its
    window ``[t, t + gap)``), stamped ``__seq = seq``."""
    extra = [pl.col(WS).min(), pl.col(WE).max(), pl.lit(seq, pl.Int64).alias(SEQ)]
    if keys and rows.height:
        last_start, first_end = rows.get_column(WS).max(), rows.get_column(WE).min()
        if last_start <= first_end:  # type: ignore[operator]
            # every window overlaps every other (the batch spans less than the
            # gap): one session per key, aggregated in arrival order as is
            return partials.from_rows(rows, keys, extra)
    # sessionize in time order, aggregate in arrival order (collect_list,
    # ties of first/last). Rows usually arrive in time order: then a stable
    # sort by key alone gives time order per key that is also arrival order.
    if rows.get_column(WS).is_sorted():
        if keys:
            rows = rows.sort(keys, maintain_order=True)
        rows = with_session_ids(rows, keys)
    else:
        rows = rows.with_row_index("__arr").sort([*keys, WS])
        rows = with_session_ids(rows, keys).sort("__arr").drop("__arr")
    return partials.from_rows(rows, [*keys, "__sid"], extra).drop("__sid")


def rescue_late_rows(
    assigned: pl.DataFrame,
    late: pl.Expr,
    keys: list[str],
    kept_sessions: Callable[[pl.DataFrame], pl.DataFrame | None],
) -> pl.Expr:
    """Judge lateness on the merged session, element by element as in Flink.

    A row whose own window ``[t, t + gap)`` is late still counts when, at its
    arrival, it touches a kept session, a non-late row that arrived before it
    in this batch, or a late row already rescued. ``kept_sessions`` gives the
    kept sessions (keys, ``__ws``, ``__we``) of the late rows' keys. This path
    only runs for late rows, so it may be sequential.
    """
    rows = assigned.with_row_index("__r").with_columns(late.alias("__late"))
    cand = rows.filter(pl.col("__late"))
    if cand.height == 0:
        return late
    ckeys = cand.select(keys).unique() if keys else None

    def key_of(r: dict[str, object]) -> tuple[object, ...]:
        return tuple(r[k] for k in keys)

    sessions: dict[tuple[object, ...], list[tuple[int, int]]] = {}
    st = kept_sessions(cand.select(keys).unique())
    if st is not None and st.height:
        st = st.join(ckeys, on=keys, how="semi") if ckeys is not None else st
        for r in st.select(*keys, WS, WE).iter_rows(named=True):
            sessions.setdefault(key_of(r), []).append((r[WS], r[WE]))
    early = rows.filter(~pl.col("__late"))
    if ckeys is not None:
        early = early.join(ckeys, on=keys, how="semi")
    pending: dict[tuple[object, ...], list[tuple[int, int, int]]] = {}
    for r in early.select("__r", *keys, WS, WE).iter_rows(named=True):
        pending.setdefault(key_of(r), []).append((r["__r"], r[WS], r[WE]))
    rescued: list[int] = []
    for r in cand.select("__r", *keys, WS, WE).iter_rows(named=True):
        k = key_of(r)
        ivs = sessions.setdefault(k, [])
        before = pending.get(k)
        while before and before[0][0] < r["__r"]:
            _, a, b = before.pop(0)
            ivs.append((a, b))
        ws, we = r[WS], r[WE]
        if any(a <= we and b >= ws for a, b in ivs):
            rescued.append(r["__r"])
            ivs.append((ws, we))
    if not rescued:
        return late
    return late & ~pl.int_range(pl.len()).is_in(pl.Series(rescued, dtype=pl.UInt32).implode())
