"""Hive-style partitioned file sinks: layout, contents, and exactly-once commits."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from tests.helpers import same_rows


def _rows(n: int) -> list[dict]:
    return [
        {"day": f"d{i % 3}", "hm": None if i % 7 == 0 else f"h/{i % 2}", "v": i} for i in range(n)
    ]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("parallelism", [1, 3])
def test_layout_and_contents(tmp_path: Path, fmt: str, parallelism: int) -> None:
    out = tmp_path / "out"
    f = sl.Flow("p", parallelism=parallelism)
    make = getattr(sl.sinks, fmt)
    f.source(sl.sources.memory(_rows(100), batch_size=9)).rebalance().sink(
        make(out, partition_by=["day", "hm"])
    )
    f.run(timeout=30)
    dirs = sorted(str(p.relative_to(out)) for p in out.glob("*/*") if p.is_dir())
    # a '/' inside a value is escaped; nulls go to Hive's default partition
    assert dirs == sorted(
        f"day=d{d}/hm={h}"
        for d in range(3)
        for h in ("h%2F0", "h%2F1", "__HIVE_DEFAULT_PARTITION__")
    )
    got = []
    for d in out.glob("*/*"):
        day = d.parent.name.split("=", 1)[1]
        hm_raw = d.name.split("=", 1)[1]
        hm = None if hm_raw == "__HIVE_DEFAULT_PARTITION__" else hm_raw.replace("%2F", "/")
        for part in d.iterdir():
            assert not part.name.startswith("."), "no hidden file left behind"
            read = {"csv": pl.read_csv, "jsonl": pl.read_ndjson, "parquet": pl.read_parquet}[fmt]
            df = read(part)
            assert df.columns == ["v"], "partition columns are not repeated in the files"
            got += [{"day": day, "hm": hm, "v": v} for v in df["v"].to_list()]
    assert same_rows(pl.DataFrame(got), pl.DataFrame(_rows(100)))


def test_missing_partition_column(tmp_path: Path) -> None:
    f = sl.Flow("p")
    f.source([{"v": 1}]).sink(sl.sinks.csv(tmp_path / "o", partition_by="day"))
    with pytest.raises(sl.JobError, match=r"partition column\(s\) \['day'\]"):
        f.run(timeout=30)


def test_single_file_cannot_partition(tmp_path: Path) -> None:
    with pytest.raises(sl.ConfigError, match="partition_by needs a directory"):
        sl.sinks.csv(tmp_path / "o.csv", partition_by="day")


def test_exactly_once_across_stop_and_resume(tmp_path: Path) -> None:
    """Stop mid-way (stop = savepoint), resume from it: every row exactly once."""
    from tests.helpers import StopAfter

    out, ck = tmp_path / "out", tmp_path / "ck"
    rows = _rows(2_000)

    def build(stop: bool) -> sl.Flow:
        f = sl.Flow("p", parallelism=2)
        s = f.source(sl.sources.memory(rows, batch_size=50)).rebalance()
        s.sink(sl.sinks.parquet(out, partition_by=["day", "hm"]))
        s.sink(StopAfter(f, 10 if stop else 10**9))  # same operators in both runs
        return f

    r1 = build(True).run(timeout=60, checkpoint_dir=ck, checkpoint_interval="50ms")
    assert r1.stopped
    first = pl.read_parquet(out / "**/*.parquet", hive_partitioning=True)
    assert 0 < first.height < 2_000
    build(False).run(timeout=60, checkpoint_dir=ck, checkpoint_interval="50ms")
    df = pl.read_parquet(out / "**/*.parquet", hive_partitioning=True)
    assert sorted(df["v"].to_list()) == list(range(2_000))
    assert not [p for p in out.rglob(".*") if p.is_file()], "no hidden file left behind"
