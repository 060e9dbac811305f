"""The source subtask: reads its splits, stamps event time, generates watermarks.

Per split it tracks a watermark (bounded out-of-orderness) and idleness; the
subtask's watermark is the minimum over its active splits. Small reads are
buffered for at most ``linger_ms`` so that batches stay large under load and
latency stays low when idle (adaptive batching).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from sluice.connectors.base import OnError, ReadBatch, ReaderContext, Source, SplitReader
from sluice.errors import BadRecordError, JobError, SluiceError
from sluice.operators.base import Operator, OperatorContext
from sluice.runtime.messages import MAX_TIME, MIN_TIME, TIME, Barrier
from sluice.state.snapshot import Snapshot
from sluice.time.watermarks import SplitWatermarks, WatermarkStrategy

_TIME_UNITS = {"ms": 1, "s": 1000, "us": 0.001, "ns": 0.000001}


@dataclass(frozen=True)
class SourceSpec:
    """Everything the user said about a source in ``flow.source(...)``."""

    source: Source
    name: str
    time: str | pl.Expr | None
    time_unit: str
    time_format: str | None
    watermark: WatermarkStrategy
    schema: Mapping[str, Any] | None
    on_error: OnError
    max_batch_rows: int
    linger_ms: int


class _Split:
    __slots__ = ("buffer", "buffer_rows", "buffer_since", "reader", "wm")

    def __init__(self, reader: SplitReader, wm: SplitWatermarks) -> None:
        self.reader = reader
        self.wm = wm
        self.buffer: list[ReadBatch] = []
        self.buffer_rows = 0
        self.buffer_since = 0


class SourceOperator(Operator):
    """Head of a source subtask. ``poll`` is called by the runtime's loop."""

    def __init__(self, spec: SourceSpec, readers: list[SplitReader]) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self._readers = readers
        self._splits: list[_Split] = []
        self._rctx = ReaderContext(spec.name, spec.on_error)
        self._schema: dict[str, pl.DataType] | None = (
            {k: _dtype(v) for k, v in spec.schema.items()} if spec.schema else None
        )
        self.ended = False
        self._idle_sent = False
        self._event_time = spec.time is not None
        self._coalesce = spec.source.coalesce
        self._rewatermark = False

    def open(self, ctx: OperatorContext) -> None:
        super().open(ctx)
        now = ctx.now()
        for r in self._readers:
            self._add_split(r, now)

    def _add_split(self, reader: SplitReader, now: int) -> None:
        reader.open(self._rctx)
        self._splits.append(_Split(reader, SplitWatermarks(self.spec.watermark, now)))

    def add_splits(self, readers: list[SplitReader]) -> None:
        assert self.ctx is not None
        now = self.ctx.now()
        for r in readers:
            self._add_split(r, now)

    # -- the loop's entry point ----------------------------------------------------
    def poll(self) -> bool:
        """Read from every split once; return True if anything was emitted or read."""
        if self.ended:
            return False
        assert self.ctx is not None
        progressed = False
        if self._rewatermark:
            self.emit_restored_watermark()
        now = self.ctx.now()
        for sp in self._splits:
            if sp.reader.finished and not sp.buffer:
                continue
            if not sp.reader.finished:
                try:
                    rb = sp.reader.poll(self.spec.max_batch_rows)
                except SluiceError:
                    raise
                except Exception as e:
                    raise JobError(
                        f"source {self.name!r} failed reading split {sp.reader.split_id!r}: "
                        f"{type(e).__name__}: {e}"
                    ) from e
                dead = self._rctx.take_dead_letters()
                if dead is not None:
                    self.metrics.add("dead_letters", dead.height)
                    self.output.emit_side("dead_letter", dead)
                    progressed = True
                if rb is not None and rb.data.height:
                    # a big read means more is waiting: do not let the loop sleep
                    if rb.data.height >= self.spec.max_batch_rows // 4:
                        progressed = True
                    if not sp.buffer:
                        sp.buffer_since = now
                    sp.buffer.append(rb)
                    sp.buffer_rows += rb.data.height
            if sp.buffer and (
                not self._coalesce
                or sp.buffer_rows >= self.spec.max_batch_rows // 4
                or now - sp.buffer_since >= self.spec.linger_ms
                or sp.reader.finished
            ):
                self._flush_split(sp, now)
                progressed = True
            elif not sp.buffer and sp.wm.check_idle(now):
                progressed |= self._update_watermark()
        if all(sp.reader.finished and not sp.buffer for sp in self._splits):
            if not self.spec.source.bounded and not self._splits:
                return progressed
            if self.spec.source.bounded:
                self._finish()
                return True
        return progressed

    def _flush_split(self, sp: _Split, now: int) -> None:
        # small reads are prepared (schema, event time) once, as one batch
        rb = sp.buffer[0] if len(sp.buffer) == 1 else _merge_reads(sp.buffer)
        sp.buffer = []
        sp.buffer_rows = 0
        batch = self._prepare(rb)
        if batch.height == 0:
            return
        if self._event_time:
            mx = batch.get_column(TIME).max()
            sp.wm.observe(int(mx) if mx is not None else MIN_TIME, now)  # type: ignore[arg-type]
        else:
            sp.wm.last_activity = now
            sp.wm.idle = False
        self.emit(batch)
        self._update_watermark()

    def _update_watermark(self) -> bool:
        active = [
            sp.wm.watermark for sp in self._splits if not sp.wm.idle and not sp.reader.finished
        ]
        if not active:
            if not self._idle_sent:
                # all splits idle: flush the largest split watermark first (Flink)
                marks = [sp.wm.watermark for sp in self._splits if not sp.reader.finished]
                if self._event_time and marks and max(marks) > self.watermark:
                    self.push_watermark(max(marks))
                self._idle_sent = True
                self.output.idle(True)
                return True
            return False
        if self._idle_sent:
            self._idle_sent = False
            self.output.idle(False)
        if self._event_time:
            wm = min(active)
            if wm > self.watermark:
                self.push_watermark(wm)
                return True
        return False

    def _finish(self) -> None:
        self.ended = True
        if self._idle_sent:
            self._idle_sent = False
            self.output.idle(False)
        self.push_watermark(MAX_TIME)
        for sp in self._splits:
            sp.reader.close()
        self.push_end()

    # -- checkpoints -------------------------------------------------------------------
    def inject_barrier(self, barrier: Barrier) -> None:
        """Emit what is buffered, then the barrier: the positions recorded in the
        snapshot are exactly after the last rows sent before it."""
        assert self.ctx is not None
        now = self.ctx.now()
        for sp in self._splits:
            if sp.buffer:
                self._flush_split(sp, now)
        self.push_barrier(barrier)

    def snapshot_state(self) -> Snapshot:
        splits = {
            sp.reader.split_id: {
                "reader": sp.reader.snapshot(),
                "max_time": sp.wm.max_time,
                "watermark": sp.wm.watermark,
                "finished": sp.reader.finished,
            }
            for sp in self._splits
        }
        snap = Snapshot(watermark=self.watermark, meta={"splits": splits})
        if self._schema is not None:
            snap.tables["schema"] = pl.DataFrame(schema=self._schema)
        return snap

    def restore_state(self, snapshot: Snapshot) -> None:
        super().restore_state(snapshot)
        saved: dict[str, dict[str, Any]] = {}
        for part in snapshot.meta.get("parts", []):
            saved.update(part.get("splits", {}))
        for sp in self._splits:
            st = saved.get(sp.reader.split_id)
            if st is None:
                continue  # a split that appeared after the checkpoint (new file)
            sp.reader.restore(st["reader"])
            sp.wm.max_time = int(st["max_time"])
            sp.wm.watermark = int(st["watermark"])
            if st["finished"]:
                sp.reader.finished = True
        schema = snapshot.tables.get("schema")
        if schema is not None and self.spec.schema is None:
            self._schema = dict(schema.schema)
        self._rewatermark = True

    def emit_restored_watermark(self) -> None:
        """After a restore, send the restored watermark before any data (the
        runtime calls this for every source before the first poll)."""
        if self._rewatermark:
            self._rewatermark = False
            self._update_watermark()

    def split_ids(self) -> list[str]:
        return [sp.reader.split_id for sp in self._splits]

    def stop(self) -> None:
        """Stop reading without end-of-stream semantics (Ctrl-C)."""
        self.ended = True
        for sp in self._splits:
            sp.reader.close()

    def process_batch(
        self, batch: pl.DataFrame
    ) -> None:  # pragma: no cover - sources have no input
        raise AssertionError("a source has no input")

    # -- per-batch preparation: schema, event time ---------------------------------
    def _prepare(self, rb: ReadBatch) -> pl.DataFrame:
        df, rb = self._conform(rb)
        if self._event_time and df.height:
            df = self._stamp_time(df, rb)
        return df

    def _conform(self, rb: ReadBatch) -> tuple[pl.DataFrame, ReadBatch]:
        """Make the batch match the stream's schema; report rows that cannot.

        With a declared schema, fields outside it are bad records. Without one,
        the schema is inferred and evolves: new fields are added, and a column
        first seen all-null takes the type of its first non-null values.
        """
        df = rb.data
        if self._schema is None:
            self._schema = dict(df.schema)
            return df, rb
        schema = self._schema
        if dict(df.schema) == schema:
            return df, rb
        declared = self.spec.schema is not None
        bad_rows: set[int] = set()
        for c in [c for c in df.columns if c not in schema]:
            if not declared:
                schema[c] = df.schema[c]
                continue
            for r in df.get_column(c).is_not_null().arg_true().to_list():
                self._bad(
                    rb,
                    r,
                    f"field {c!r} is not in the schema {list(schema)}; "
                    "declare it with schema= on the source",
                )
                bad_rows.add(r)
        if not declared:
            for c, dt in list(schema.items()):
                if dt == pl.Null and c in df.columns and df.schema[c] != pl.Null:
                    schema[c] = df.schema[c]
        missing = [c for c in schema if c not in df.columns]
        if missing:
            df = df.with_columns(pl.lit(None, schema[c]).alias(c) for c in missing)
        for c, dt in schema.items():
            if df.schema[c] == dt:
                continue
            src = df.get_column(c)
            conv = _cast_checked(src, dt)
            bad = (conv.is_null() & src.is_not_null()).arg_true().to_list()
            for r in bad:
                if r not in bad_rows:
                    self._bad(
                        rb,
                        r,
                        f"field {c!r} has value {src[r]!r} that does not match the schema type {dt}",
                    )
            bad_rows.update(bad)
            df = df.with_columns(conv.alias(c))
        df = df.select(list(schema))
        if bad_rows:
            keep = pl.Series([i not in bad_rows for i in range(df.height)])
            df = df.filter(keep)
            rb = _filtered(rb, keep)
        return df, rb

    def _stamp_time(self, df: pl.DataFrame, rb: ReadBatch) -> pl.DataFrame:
        spec = self.spec
        expr = pl.col(spec.time) if isinstance(spec.time, str) else spec.time
        assert expr is not None
        if isinstance(spec.time, str) and spec.time not in df.columns:
            self._bad(rb, 0, f"event-time column {spec.time!r} is missing (columns: {df.columns})")
            return df.clear()
        if isinstance(spec.time, str):
            raw = df.get_column(spec.time)
        else:
            raw = df.select(expr.alias("__raw")).get_column("__raw")
        ts = self._to_millis(raw)
        bad = ts.is_null()
        if bad.any():
            rows = bad.arg_true().to_list()
            for r in rows:
                v = raw[r]
                reason = (
                    f"event-time column {spec.time!r} is missing"
                    if v is None
                    else f"cannot parse event time {v!r} from column {spec.time!r}"
                )
                self._bad(rb, r, reason)
            keep = ~bad
            df = df.filter(keep)
            ts = ts.filter(keep)
        ts = ts.alias(TIME)
        return df.with_columns(ts) if TIME in df.schema else df.hstack([ts])

    def _to_millis(self, raw: pl.Series) -> pl.Series:
        dt = raw.dtype
        if dt == pl.Datetime or isinstance(dt, pl.Datetime):
            return raw.dt.epoch("ms")
        if dt == pl.Date:
            return raw.cast(pl.Datetime("ms")).dt.epoch("ms")
        if dt == pl.String:
            fmt = self.spec.time_format
            try:
                parsed = raw.str.to_datetime(format=fmt, strict=False, time_unit="ms")
            except pl.exceptions.PolarsError:
                if fmt is not None:
                    raise
                return _iso_millis(raw)  # no format could be inferred from the values
            if parsed.dtype.time_zone is not None:  # type: ignore[attr-defined]
                parsed = parsed.dt.convert_time_zone("UTC")
            ms = parsed.dt.epoch("ms")
            if fmt is None:
                missed = ms.is_null() & raw.is_not_null()
                if missed.any():  # other ISO-8601 layouts than the inferred one
                    ms = ms.set(missed, None).zip_with(~missed, _iso_millis(raw))  # type: ignore[arg-type]
            return ms
        if dt.is_numeric():
            mult = _TIME_UNITS[self.spec.time_unit]
            if mult == 1:
                return raw.cast(pl.Int64, strict=False)
            return (raw * mult).floor().cast(pl.Int64, strict=False)
        return pl.Series([None] * len(raw), dtype=pl.Int64)

    def _bad(self, rb: ReadBatch, row: int, reason: str) -> None:
        raw = None
        try:
            if row < rb.data.height:
                raw = json.dumps(rb.data.row(row, named=True), default=str)
        except Exception:  # pragma: no cover - best effort context
            raw = None
        self._rctx.bad_record(reason, file=rb.file, line=rb.line_of(row), raw=raw)
        dead = self._rctx.take_dead_letters()
        if dead is not None:
            self.metrics.add("dead_letters", dead.height)
            self.output.emit_side("dead_letter", dead)


def _cast_checked(src: pl.Series, dtype: pl.DataType) -> pl.Series:
    """Cast without losing information: values that do not convert exactly
    (unparsable strings, 2.5 to an integer, overflow) become null."""
    if src.dtype == pl.Null:
        return src.cast(dtype)
    if dtype == pl.Boolean and src.dtype == pl.String:
        low = src.str.strip_chars().str.to_lowercase()
        return (
            pl.select(
                pl.when(low.is_in(["true", "1", "yes"]))
                .then(True)
                .when(low.is_in(["false", "0", "no"]))
                .then(False)
                .otherwise(None)
            )
            .to_series()
            .alias(src.name)
        )
    try:
        conv = src.cast(dtype, strict=False)
    except pl.exceptions.PolarsError:
        return pl.Series(src.name, [None] * len(src), dtype=dtype)
    if src.dtype.is_float() and dtype.is_integer():
        exact = conv.cast(pl.Float64) == src
        conv = conv.set(~exact.fill_null(True) & src.is_not_null(), None)  # type: ignore[arg-type]
    return conv


def _iso_millis(raw: pl.Series) -> pl.Series:
    from datetime import UTC, datetime

    out: list[int | None] = []
    for v in raw:
        try:
            d = datetime.fromisoformat(v)
        except (TypeError, ValueError):
            out.append(None)
            continue
        if d.tzinfo is None:
            d = d.replace(tzinfo=UTC)
        out.append(int(d.timestamp() * 1000))
    return pl.Series(raw.name, out, dtype=pl.Int64)


def _merge_reads(reads: list[ReadBatch]) -> ReadBatch:
    import numpy as np

    data = pl.concat([r.data for r in reads], how="diagonal_relaxed")
    lines = np.concatenate(
        [
            r.lines
            if r.lines is not None
            else np.arange(r.first_line, r.first_line + r.data.height, dtype=np.int64)
            for r in reads
        ]
    )
    return ReadBatch(data, reads[0].file, reads[0].first_line, lines)


def _filtered(rb: ReadBatch, keep: pl.Series) -> ReadBatch:
    import numpy as np

    lines = np.asarray([rb.line_of(i) for i in range(rb.data.height)])[keep.to_numpy()]
    return ReadBatch(rb.data.filter(keep), rb.file, rb.first_line, lines)


def _dtype(v: Any) -> pl.DataType:
    if isinstance(v, pl.DataType):
        return v
    if isinstance(v, type) and issubclass(v, pl.DataType):
        return v()
    py = {int: pl.Int64(), float: pl.Float64(), str: pl.String(), bool: pl.Boolean()}
    if v in py:
        return py[v]
    raise BadRecordError("schema", f"unsupported schema type {v!r}")


__all__ = ["SourceOperator", "SourceSpec"]
