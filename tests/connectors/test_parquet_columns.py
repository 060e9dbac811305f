"""The Parquet source reads only the columns asked for (projection pushdown)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import sluice as sl


def test_reads_only_the_columns(tmp_path: Path) -> None:
    pl.DataFrame({"a": [1, 2], "b": ["x", "y"], "c": [1.0, 2.0]}).write_parquet(
        tmp_path / "t.parquet"
    )
    f, out = sl.Flow("cols"), sl.sinks.collect()
    f.source(sl.sources.parquet(tmp_path, columns=["c", "a"])).sink(out)
    f.run(timeout=30)
    assert out.to_polars().rows() == [(1.0, 1), (2.0, 2)]


def test_missing_column_is_named(tmp_path: Path) -> None:
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "t.parquet")
    f = sl.Flow("cols")
    f.source(sl.sources.parquet(tmp_path / "t.parquet", columns=["a", "zz"])).sink(
        sl.sinks.collect()
    )
    with pytest.raises(sl.ConfigError, match=r"has no column\(s\) \['zz'\]"):
        f.run(timeout=30)


def test_columns_must_be_a_list(tmp_path: Path) -> None:
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "t.parquet")
    with pytest.raises(sl.ConfigError, match="non-empty list"):
        sl.sources.parquet(tmp_path, columns="a")  # type: ignore[arg-type]
