"""Checking record values against a topic's declared schema, a whole batch at a time.

A schema maps field names to ``str``, ``int``, ``float``, ``bool``, ``datetime``
(an ISO-8601 string or a datetime) or ``any``; ``?`` makes a field optional
(``"float?"``). Values are JSON objects; fields not declared are allowed.
Tombstones (null values) are not checked. A batch is parsed and checked with
Polars; only when it fails are rows looked at one by one, to name the first bad
record and field.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pyarrow as pa

from sluice.log.errors import SchemaMismatchError

_INTS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
_FLOATS = (pl.Float32, pl.Float64)


def _dtype_ok(kind: str, dtype: pl.DataType, col: pl.Series) -> bool:
    if kind == "any" or dtype == pl.Null:
        return True
    if kind == "str":
        return dtype in (pl.String, pl.Categorical)
    if kind == "int":
        return dtype in _INTS
    if kind == "float":
        return dtype in _INTS or dtype in _FLOATS
    if kind == "bool":
        return dtype == pl.Boolean
    if kind == "datetime":
        if isinstance(dtype, pl.Datetime) or dtype == pl.Date:
            return True
        if dtype == pl.String:
            parsed = col.str.to_datetime(strict=False, time_unit="ms")
            return parsed.null_count() == col.null_count()
        return dtype in _INTS
    return False


def check_frame(df: pl.DataFrame, schema: dict[str, str], topic: str) -> None:
    """Raise :class:`SchemaMismatchError` naming the first row that breaks ``schema``.

    >>> check_frame(pl.DataFrame({"id": [1, 2]}), {"id": "int"}, "t")
    >>> check_frame(pl.DataFrame({"id": ["x"]}), {"id": "int"}, "t")
    Traceback (most recent call last):
    ...
    sluice.log.errors.SchemaMismatchError: record 0 does not match the schema of topic 't': field 'id' must be int, got String ('x')
    """
    for name, decl in schema.items():
        optional = decl.endswith("?")
        kind = decl.rstrip("?")
        if name not in df.columns:
            if optional:
                continue
            raise SchemaMismatchError(
                f"record 0 does not match the schema of topic {topic!r}: "
                f"required field {name!r} is missing (schema: {schema})"
            )
        col = df.get_column(name)
        if not optional and col.null_count():
            row = int(col.is_null().arg_max() or 0)
            raise SchemaMismatchError(
                f"record {row} does not match the schema of topic {topic!r}: "
                f"required field {name!r} is missing or null"
            )
        if not _dtype_ok(kind, col.dtype, col):
            row, example = _first_bad(col, kind)
            raise SchemaMismatchError(
                f"record {row} does not match the schema of topic {topic!r}: "
                f"field {name!r} must be {kind}, got {col.dtype} ({example!r})"
            )


def _first_bad(col: pl.Series, kind: str) -> tuple[int, Any]:
    for i, v in enumerate(col.to_list()):
        if v is None:
            continue
        if kind == "datetime" and isinstance(v, str):
            ok = pl.Series([v]).str.to_datetime(strict=False).null_count() == 0
        else:
            ok = _value_ok(kind, v)
        if not ok:
            return i, v
    return 0, col[0] if len(col) else None


def _value_ok(kind: str, v: Any) -> bool:
    if kind == "str":
        return isinstance(v, str)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, int | float) and not isinstance(v, bool)
    if kind == "bool":
        return isinstance(v, bool)
    return True


def check_values(values: pa.Array, schema: dict[str, str], topic: str) -> None:
    """Check JSON values (a binary Arrow array; nulls are tombstones and skipped)."""
    if values.null_count:
        values = values.filter(values.is_valid())
    if len(values) == 0:
        return
    lines = values.to_pylist()
    try:
        df = pl.read_ndjson(b"\n".join(lines), infer_schema_length=None)
        if df.height != len(lines):
            raise ValueError("line count")
    except Exception:
        for i, raw in enumerate(lines):
            try:
                obj = json.loads(raw)
            except ValueError as e:
                raise SchemaMismatchError(
                    f"record {i} of the batch is not JSON, but topic {topic!r} declares a "
                    f"schema: {e}: {raw[:200]!r}"
                ) from None
            if not isinstance(obj, dict):
                raise SchemaMismatchError(
                    f"record {i} of the batch is not a JSON object, but topic {topic!r} "
                    f"declares a schema: {raw[:200]!r}"
                ) from None
        _check_rows(lines, schema, topic)
        return
    try:
        check_frame(df, schema, topic)
    except SchemaMismatchError:
        _check_rows(lines, schema, topic)  # name the first bad record exactly
        raise


def _check_rows(lines: list[bytes], schema: dict[str, str], topic: str) -> None:
    """The slow path: check JSON objects one by one (after a batch failed)."""
    for i, raw in enumerate(lines):
        obj = json.loads(raw)
        for name, decl in schema.items():
            kind = decl.rstrip("?")
            v = obj.get(name)
            if v is None:
                if not decl.endswith("?"):
                    raise SchemaMismatchError(
                        f"record {i} does not match the schema of topic {topic!r}: "
                        f"required field {name!r} is missing or null"
                    )
                continue
            ok = (
                pl.Series([v]).str.to_datetime(strict=False).null_count() == 0
                if kind == "datetime" and isinstance(v, str)
                else _value_ok(kind, v)
            )
            if not ok:
                raise SchemaMismatchError(
                    f"record {i} does not match the schema of topic {topic!r}: "
                    f"field {name!r} must be {kind}, got {type(v).__name__} ({v!r})"
                )


__all__ = ["check_frame", "check_values"]
