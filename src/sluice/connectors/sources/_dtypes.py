"""Column types as JSON values, for the checkpoint state of the text readers.

>>> t = pl.Struct({"a": pl.List(pl.Int64), "t": pl.Datetime("ms", "UTC")})
>>> dtype_from_json(dtype_to_json(t)) == t
True
"""

from __future__ import annotations

from typing import Any

import polars as pl
from polars.datatypes import DataTypeClass

#: Types without parameters, recorded by name.
_SIMPLE: dict[str, type[pl.DataType]] = {
    t.__name__: t
    for t in (
        pl.Null,
        pl.Boolean,
        pl.String,
        pl.Binary,
        pl.Date,
        pl.Time,
        pl.Categorical,
        pl.Float32,
        pl.Float64,
        pl.Int8,
        pl.Int16,
        pl.Int32,
        pl.Int64,
        pl.Int128,
        pl.UInt8,
        pl.UInt16,
        pl.UInt32,
        pl.UInt64,
    )
}


def dtype_to_json(dtype: pl.DataType | DataTypeClass) -> Any:
    """A Polars type as a JSON value (see :func:`dtype_from_json`)."""
    if isinstance(dtype, type):
        dtype = dtype()
    if isinstance(dtype, pl.List):
        return {"list": dtype_to_json(dtype.inner)}
    if isinstance(dtype, pl.Struct):
        return {"struct": [[f.name, dtype_to_json(f.dtype)] for f in dtype.fields]}
    if isinstance(dtype, pl.Datetime):
        return {"datetime": dtype.time_unit, "time_zone": dtype.time_zone}
    if isinstance(dtype, pl.Duration):
        return {"duration": dtype.time_unit}
    name = type(dtype).__name__
    if name not in _SIMPLE:
        raise TypeError(f"cannot record column type {dtype} in a checkpoint")
    return name


def dtype_from_json(value: Any) -> pl.DataType:
    """The Polars type recorded by :func:`dtype_to_json`."""
    if isinstance(value, str):
        if value not in _SIMPLE:
            raise ValueError(f"unknown column type {value!r} in a checkpoint")
        return _SIMPLE[value]()
    if "list" in value:
        return pl.List(dtype_from_json(value["list"]))
    if "struct" in value:
        return pl.Struct({name: dtype_from_json(t) for name, t in value["struct"]})
    if "datetime" in value:
        return pl.Datetime(value["datetime"], value.get("time_zone"))
    if "duration" in value:
        return pl.Duration(value["duration"])
    raise ValueError(f"unknown column type {value!r} in a checkpoint")


def schema_to_json(schema: dict[str, pl.DataType]) -> list[list[Any]]:
    """``[[column, type], ...]``, in column order."""
    return [[c, dtype_to_json(t)] for c, t in schema.items()]


def schema_from_json(value: list[list[Any]]) -> dict[str, pl.DataType]:
    return {c: dtype_from_json(t) for c, t in value}
