"""Encoders of the file sinks: one format written into one open file.

An encoder may be moved on to a new file (``enc.fh = ...``) to continue the same
logical file there: the CSV header is then not written again and a Parquet
file keeps the column types of the first. The transactional single-file sink
writes each checkpoint's rows this way, as segments appended on commit.
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from typing import Any, BinaryIO

import polars as pl


def iso_datetimes(df: pl.DataFrame) -> pl.DataFrame:
    """Datetime, Date and Time columns as ISO-8601 strings (for text formats).

    >>> import datetime as dt
    >>> iso_datetimes(pl.DataFrame({"t": [dt.datetime(2024, 1, 2, 3, 4, 5)]}))["t"][0]
    '2024-01-02T03:04:05'
    """
    exprs = []
    for c, dtype in df.schema.items():
        if isinstance(dtype, pl.Datetime):
            fmt = "%Y-%m-%dT%H:%M:%S%.f" + ("%:z" if dtype.time_zone else "")
            exprs.append(pl.col(c).dt.to_string(fmt))
        elif isinstance(dtype, pl.Date):
            exprs.append(pl.col(c).dt.to_string("%Y-%m-%d"))
        elif isinstance(dtype, pl.Time):
            exprs.append(pl.col(c).dt.to_string("%H:%M:%S%.f"))
    return df.with_columns(exprs) if exprs else df


class Encoder(ABC):
    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh

    def fits(self, df: pl.DataFrame) -> Any:
        """``df`` made ready for this file, or ``None`` if its columns cannot go in it."""
        return df

    @abstractmethod
    def write(self, data: Any) -> None: ...

    def finish(self) -> None:  # noqa: B027 - optional hook
        """Write what the format needs at the end of a file."""

    def continue_file(self, path: str) -> None:  # noqa: B027 - optional hook
        """Continue the complete file ``path`` (a single file resumed after a
        restart): take its header or column types."""


class JsonlEncoder(Encoder):
    def write(self, data: Any) -> None:
        buf = io.BytesIO()
        iso_datetimes(data).write_ndjson(buf)
        self.fh.write(buf.getvalue())


class CsvEncoder(Encoder):
    def __init__(self, fh: BinaryIO, separator: str) -> None:
        super().__init__(fh)
        self.separator = separator
        self.columns: list[str] | None = None

    def fits(self, df: pl.DataFrame) -> Any:
        if self.columns is None:
            return df
        if set(df.columns) != set(self.columns):
            return None
        return df.select(self.columns)

    def write(self, data: Any) -> None:
        buf = io.BytesIO()
        iso_datetimes(data).write_csv(
            buf, include_header=self.columns is None, separator=self.separator
        )
        self.columns = self.columns or list(data.columns)
        self.fh.write(buf.getvalue())

    def continue_file(self, path: str) -> None:
        if os.path.getsize(path):
            self.columns = pl.read_csv(path, n_rows=0, separator=self.separator).columns


class ParquetEncoder(Encoder):
    def __init__(self, fh: BinaryIO) -> None:
        super().__init__(fh)
        self.writer: Any = None
        self.schema: Any = None  # of the first batch, kept for the files that continue it

    def fits(self, df: pl.DataFrame) -> Any:
        table = df.to_arrow()
        schema = self.schema
        if schema is None:
            return table
        if set(table.column_names) != set(schema.names):
            return None
        table = table.select(schema.names)
        if table.schema.equals(schema):
            return table
        try:
            return table.cast(schema)
        except Exception:
            return None

    def write(self, data: Any) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            if self.schema is None:
                self.schema = data.schema
            self.writer = pq.ParquetWriter(self.fh, self.schema)
        self.writer.write_table(data)

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def continue_file(self, path: str) -> None:
        import pyarrow.parquet as pq

        self.schema = pq.read_schema(path)
