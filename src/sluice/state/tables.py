"""Keyed state and timers as checkpoint tables, the same for every backend.

A process operator's snapshot holds these keyed tables (each with the
operator's key columns, to which the checkpoint adds the key group):

============================  ==================================================
``value_state``               ``state``, ``ttl_ts``, ``value``
``list_state``                ``state``, ``pos``, ``ttl_ts``, ``value``
``map_state``                 ``state``, ``map_key``, ``ttl_ts``, ``value``
``event_timers``              ``time``
``processing_timers``         ``time``
============================  ==================================================

``value`` and ``map_key`` are pickled; ``ttl_ts`` is the last write time of
state with a TTL (null without), so that time-to-live survives a restore;
expired entries are left out. Since both backends scan to and restore from the
same tables, a checkpoint taken with one restores into the other.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Collection, Hashable, Iterator, Mapping
from typing import Any, Protocol

import polars as pl

from sluice.errors import ConfigError
from sluice.state.backends import PICKLE_PROTOCOL, StateBackend, StateKind, TimerKind

#: Rows per chunk when a snapshot scans the state (bounds transient memory).
SNAPSHOT_CHUNK = 65_536

LABELS: dict[StateKind, str] = {"value": "value_state", "list": "list_state", "map": "map_state"}
TIMER_LABELS: dict[TimerKind, str] = {"event": "event_timers", "processing": "processing_timers"}
#: The single table of checkpoints written by Sluice 0.1: whole values pickled.
LEGACY_LABEL = "values"


class SnapshotState(Protocol):
    """What a snapshot asks of a declared state: its TTL (None without), which
    write times are expired at a time, and the write time to record for entries
    that have none. :class:`sluice.state.keyed.ValueState` and its kin are one."""

    @property
    def ttl(self) -> Any: ...

    def now(self) -> int: ...

    def expired_at(self, now: int) -> Any: ...

    def written_for_snapshot(self, written: int | None) -> int | None: ...


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=PICKLE_PROTOCOL)


class StateTables:
    """Converts the keyed state of one operator subtask to checkpoint tables and back.

    >>> from sluice.state.backends import MemoryStateBackend
    >>> b = MemoryStateBackend(); b.kinds["n"] = "value"
    >>> b.set_current_key("a"); b.value_table("n").put(None, 3)
    >>> tables = StateTables(["user"], "op").write(b, {})
    >>> tables["value_state"].select("user", "state", "ttl_ts").rows()
    [('a', 'n', None)]
    >>> other = MemoryStateBackend(); StateTables(["user"], "op").read(tables, other, ())
    >>> other.set_current_key("a"); other.value_table("n").get()
    (None, 3)
    """

    def __init__(self, keys: list[str], operator: str) -> None:
        self.keys = keys
        self.operator = operator
        self.key_dtypes: dict[str, pl.DataType] = {}
        #: Restored entries of the 0.1 format, per state name, until the state is
        #: declared (only then is its kind known).
        self.legacy: dict[str, list[tuple[Hashable, bytes]]] = {}

    def remember_key_dtypes(self, schema: Mapping[str, pl.DataType]) -> None:
        """Use the key columns' types of the input (the key group hashes them)."""
        if not self.key_dtypes:
            self.key_dtypes = {k: schema[k] for k in self.keys if k in schema}

    def key_columns(self, keys: list[Hashable]) -> dict[str, pl.Series]:
        if len(self.keys) == 1:
            cols = {self.keys[0]: list(keys)}
        else:
            cols = {k: [key[i] for key in keys] for i, k in enumerate(self.keys)}  # type: ignore[index]
        out = {}
        for k, values in cols.items():
            try:
                out[k] = pl.Series(k, values, dtype=self.key_dtypes.get(k))
            except (TypeError, ValueError, pl.exceptions.PolarsError):
                out[k] = pl.Series(k, values)
        return out

    def keys_of(self, df: pl.DataFrame) -> list[Hashable]:
        if len(self.keys) == 1:
            return df.get_column(self.keys[0]).to_list()
        return [tuple(r) for r in df.select(self.keys).iter_rows()]

    def detached(self) -> StateTables:
        """A copy for a snapshot built on another thread: later changes of this
        one (key types learned, 0.1-format entries adopted) do not reach it."""
        other = StateTables(self.keys, self.operator)
        other.key_dtypes = dict(self.key_dtypes)
        other.legacy = {n: list(entries) for n, entries in self.legacy.items()}
        return other

    # -- snapshot ----------------------------------------------------------------------
    def write(
        self, backend: StateBackend, states: Mapping[str, SnapshotState]
    ) -> dict[str, pl.DataFrame]:
        """The tables of ``backend``'s state; ``states`` are the declared ones
        (their TTL says which entries are expired)."""
        out: dict[str, pl.DataFrame] = {}
        for kind, label in LABELS.items():
            names = [n for n, k in backend.kinds.items() if k == kind]
            rows = itertools.chain.from_iterable(
                self._rows(backend, kind, n, states.get(n)) for n in names
            )
            df = self._frame(kind, rows)
            if df is not None:
                out[label] = df
        if self.legacy:
            legacy = [(k, n, b) for n, entries in self.legacy.items() for k, b in entries]
            out[LEGACY_LABEL] = pl.DataFrame(
                {
                    **self.key_columns([k for k, _, _ in legacy]),
                    "state": [n for _, n, _ in legacy],
                    "value": pl.Series([b for _, _, b in legacy], dtype=pl.Binary),
                }
            )
        for tk, label in TIMER_LABELS.items():
            frames = []
            scan = backend.timers(tk).scan()
            while chunk := list(itertools.islice(scan, SNAPSHOT_CHUNK)):
                keys = self.key_columns([k for _, k in chunk])
                times = pl.Series([t for t, _ in chunk], dtype=pl.Int64)
                frames.append(pl.DataFrame({**keys, "time": times}))
            if frames:
                out[label] = pl.concat(frames) if len(frames) > 1 else frames[0]
        return out

    @staticmethod
    def _rows(
        backend: StateBackend, kind: StateKind, name: str, st: SnapshotState | None
    ) -> Iterator[tuple[Any, ...]]:
        """The live cells of one state as ``(key, state, [sub], ttl_ts, value)`` rows."""
        expired = st.expired_at(st.now()) if st is not None and st.ttl is not None else None
        stamp = st.written_for_snapshot if st is not None else (lambda w: w)
        if kind == "value":
            for k, w, blob in backend.value_table(name).scan():
                if expired is None or not expired(w):
                    yield k, name, stamp(w), blob
        elif kind == "list":
            for k, i, w, blob in backend.list_table(name).scan():
                if expired is None or not expired(w):
                    yield k, name, i, stamp(w), blob
        else:
            for k, mk, w, blob in backend.map_table(name).scan():
                if expired is None or not expired(w):
                    yield k, name, mk, stamp(w), blob

    def _frame(self, kind: StateKind, rows: Iterator[tuple[Any, ...]]) -> pl.DataFrame | None:
        """One table from rows, built in chunks so that a large state is never
        held as Python lists all at once."""
        frames = []
        while chunk := list(itertools.islice(rows, SNAPSHOT_CHUNK)):
            cols = list(zip(*chunk, strict=True))
            data: dict[str, Any] = {**self.key_columns(list(cols[0])), "state": cols[1]}
            if kind == "list":
                data["pos"] = pl.Series(cols[2], dtype=pl.Int64)
            elif kind == "map":
                data["map_key"] = pl.Series([_dumps(m) for m in cols[2]], dtype=pl.Binary)
            data["ttl_ts"] = pl.Series(cols[-2], dtype=pl.Int64)
            data["value"] = pl.Series(cols[-1], dtype=pl.Binary)
            frames.append(pl.DataFrame(data))
        if not frames:
            return None
        return pl.concat(frames) if len(frames) > 1 else frames[0]

    # -- restore -----------------------------------------------------------------------
    def read(
        self, tables: Mapping[str, pl.DataFrame], backend: StateBackend, declared: Collection[str]
    ) -> None:
        """Load the state and timers of ``tables`` into ``backend``; ``declared``
        names the states the function declared already."""
        for kind, label in LABELS.items():
            df = tables.get(label)
            if df is None or df.height == 0:
                continue
            self.remember_key_dtypes(df.schema)
            if kind == "list":
                df = df.sort(["state", *self.keys, "pos"], maintain_order=True)
            names = df["state"].to_list()
            for name in set(names):
                self._check_kind(backend, kind, name)
            keys = self.keys_of(df)
            ws = df["ttl_ts"].to_list()
            blobs = df["value"].to_list()
            if kind == "value":
                vt = {n: backend.value_table(n) for n in set(names)}
                for k, n, w, b in zip(keys, names, ws, blobs, strict=True):
                    vt[n].restore(k, w, b)
            elif kind == "list":
                lt = {n: backend.list_table(n) for n in set(names)}
                for k, n, w, b in zip(keys, names, ws, blobs, strict=True):
                    lt[n].restore(k, w, b)
            else:
                mt = {n: backend.map_table(n) for n in set(names)}
                mks = df["map_key"].to_list()
                for k, n, mk, w, b in zip(keys, names, mks, ws, blobs, strict=True):
                    mt[n].restore(k, pickle.loads(mk), w, b)
        legacy = tables.get(LEGACY_LABEL)
        if legacy is not None and legacy.height:
            self.remember_key_dtypes(legacy.schema)
            for k, name, blob in zip(
                self.keys_of(legacy),
                legacy["state"].to_list(),
                legacy["value"].to_list(),
                strict=True,
            ):
                self.legacy.setdefault(name, []).append((k, blob))
            for name in [n for n in self.legacy if n in declared]:
                self.adopt_legacy(backend, name)
        for tk, label in TIMER_LABELS.items():
            df = tables.get(label)
            if df is not None:
                queue = backend.timers(tk)
                for k, t in zip(self.keys_of(df), df["time"].to_list(), strict=True):
                    queue.add(t, k)

    def adopt_legacy(self, backend: StateBackend, name: str) -> None:
        """Move the 0.1-format entries of state ``name`` into ``backend``, now that
        the state is declared and its kind known."""
        entries = self.legacy.pop(name, None)
        if not entries:
            return
        kind = backend.kinds[name]
        if kind == "value":
            vt = backend.value_table(name)
            for k, blob in entries:
                vt.restore(k, None, blob)
        elif kind == "list":
            lt = backend.list_table(name)
            for k, blob in entries:
                for v in pickle.loads(blob):
                    lt.restore(k, None, _dumps(v))
        else:
            mt = backend.map_table(name)
            for k, blob in entries:
                for mk, v in pickle.loads(blob).items():
                    mt.restore(k, mk, None, _dumps(v))

    def _check_kind(self, backend: StateBackend, kind: StateKind, name: str) -> None:
        known = backend.kinds.get(name)
        if known is not None and known != kind:
            raise ConfigError(
                f"operator {self.operator!r}: state {name!r} is a {LABELS[kind]} in the "
                f"checkpoint being restored, but is used as a {LABELS[known]}; "
                "rename the state, or start without the checkpoint"
            )
        backend.kinds[name] = kind


__all__ = ["LABELS", "SNAPSHOT_CHUNK", "TIMER_LABELS", "SnapshotState", "StateTables"]
