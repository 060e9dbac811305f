"""File sinks: complete part files only, rolling, single files, text encodings."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from tests.connectors.data import events
from tests.helpers import same_rows

SINKS: dict[str, Callable[..., sl.sinks.FileSink]] = {
    "jsonl": sl.sinks.jsonl,
    "csv": sl.sinks.csv,
    "parquet": sl.sinks.parquet,
}
READ: dict[str, Callable[..., pl.DataFrame]] = {
    "jsonl": pl.read_ndjson,
    "csv": pl.read_csv,
    "parquet": pl.read_parquet,
}


def run_into(
    sink: sl.sinks.FileSink, df: pl.DataFrame, *, parallelism: int = 1, batch: int = 100
) -> None:
    flow = sl.Flow("w", parallelism=parallelism)
    flow.source(sl.sources.memory(df, batch_size=batch)).sink(sink)
    flow.run()


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_rolling_by_rows_gives_several_complete_files(tmp_path: Path, fmt: str) -> None:
    df = events(1000)
    run_into(SINKS[fmt](tmp_path, rolling_rows=300), df)
    # Batches of 100 rows: a file rolls once it holds >= 300 rows.
    assert names(tmp_path) == [f"part-0-{i:05d}.{fmt}" for i in range(4)]
    parts = [READ[fmt](tmp_path / n) for n in names(tmp_path)]
    assert [p.height for p in parts] == [300, 300, 300, 100]
    assert pl.concat(parts).equals(df)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_parallel_writers_write_their_own_parts(tmp_path: Path, fmt: str) -> None:
    df = events(900)
    run_into(SINKS[fmt](tmp_path), df, parallelism=3)
    assert names(tmp_path) == [f"part-{i}-00000.{fmt}" for i in range(3)]
    got = pl.concat([READ[fmt](tmp_path / n) for n in names(tmp_path)])
    assert same_rows(df, got)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_rolling_by_bytes(tmp_path: Path, fmt: str) -> None:
    df = events(1000)
    run_into(SINKS[fmt](tmp_path, rolling_bytes="8kB"), df)
    sizes = [(tmp_path / n).stat().st_size for n in names(tmp_path)]
    assert len(sizes) > 2 and all(s >= 8_000 for s in sizes[:-1])
    assert pl.concat([READ[fmt](tmp_path / n) for n in names(tmp_path)]).equals(df)


def test_in_progress_files_are_hidden_until_they_roll(tmp_path: Path) -> None:
    sink = sl.sinks.jsonl(tmp_path, rolling_rows=3)
    w = sink.create_writer(0, 1)
    w.open()
    w.write(pl.DataFrame({"x": [1, 2]}))
    assert names(tmp_path) == [".part-0-00000.jsonl.inprogress"]
    w.write(pl.DataFrame({"x": [3]}))
    assert names(tmp_path) == ["part-0-00000.jsonl"]
    w.write(pl.DataFrame({"x": [4]}))
    w.close()
    assert names(tmp_path) == ["part-0-00000.jsonl", "part-0-00001.jsonl"]
    assert pl.read_ndjson(tmp_path / "part-0-00001.jsonl")["x"].to_list() == [4]


def test_rolling_interval_rolls_even_when_input_stops(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"x": 1}\n{"x": 2}\n')
    out = tmp_path / "out"
    flow = sl.Flow("roll")
    flow.source(sl.sources.jsonl(src, follow=True)).sink(
        sl.sinks.jsonl(out, rolling_interval="100ms")
    )
    t = threading.Thread(target=flow.run, kwargs={"timeout": 10}, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (out / "part-0-00000.jsonl").exists():
            time.sleep(0.02)
        # The flow still runs, its input is idle, and the file is complete and visible.
        assert t.is_alive()
        assert pl.read_ndjson(out / "part-0-00000.jsonl")["x"].to_list() == [1, 2]
    finally:
        flow.stop()
        t.join(10)
    assert names(out) == ["part-0-00000.jsonl"]


def test_next_run_continues_the_sequence(tmp_path: Path) -> None:
    run_into(sl.sinks.parquet(tmp_path), pl.DataFrame({"x": [1]}))
    run_into(sl.sinks.parquet(tmp_path), pl.DataFrame({"x": [2]}))
    assert names(tmp_path) == ["part-0-00000.parquet", "part-0-00001.parquet"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_single_file_sink_runs_as_one_subtask(tmp_path: Path, fmt: str) -> None:
    df = events(500)
    path = tmp_path / "sub" / f"all.{fmt}"
    sink = SINKS[fmt](path)
    assert sink.max_parallelism == 1
    run_into(sink, df, parallelism=3)
    assert names(path.parent) == [f"all.{fmt}"]
    assert same_rows(df, READ[fmt](path))


def test_single_text_file_is_written_in_place_and_flushed(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    w = sl.sinks.jsonl(path).create_writer(0, 1)
    w.open()
    assert path.read_text() == ""
    w.write(pl.DataFrame({"x": [1]}))
    assert path.read_text() == '{"x":1}\n'
    w.close()


def test_datetimes_are_iso_strings_in_text_formats(tmp_path: Path) -> None:
    df = pl.DataFrame(
        {
            "t": [dt.datetime(2024, 1, 2, 3, 4, 5, 678000)],
            "u": [dt.datetime(2024, 1, 2, tzinfo=dt.UTC)],
            "d": [dt.date(2024, 1, 2)],
        }
    )
    run_into(sl.sinks.jsonl(tmp_path / "a.jsonl"), df)
    run_into(sl.sinks.csv(tmp_path / "a.csv"), df)
    expected = '"2024-01-02T03:04:05.678","2024-01-02T00:00:00+00:00","2024-01-02"'
    assert (tmp_path / "a.jsonl").read_text() == (
        '{"t":"2024-01-02T03:04:05.678","u":"2024-01-02T00:00:00+00:00","d":"2024-01-02"}\n'
    )
    assert (tmp_path / "a.csv").read_text() == "t,u,d\n" + expected.replace('"', "") + "\n"


def test_csv_part_starts_anew_when_columns_change(tmp_path: Path) -> None:
    w = sl.sinks.csv(tmp_path).create_writer(0, 1)
    w.open()
    w.write(pl.DataFrame({"a": [1], "b": [2]}))
    w.write(pl.DataFrame({"b": [4], "a": [3]}))  # same columns, other order
    w.write(pl.DataFrame({"c": [5]}))
    w.close()
    assert names(tmp_path) == ["part-0-00000.csv", "part-0-00001.csv"]
    assert (tmp_path / "part-0-00000.csv").read_text() == "a,b\n1,2\n3,4\n"
    assert (tmp_path / "part-0-00001.csv").read_text() == "c\n5\n"


def test_parquet_part_casts_compatible_batches(tmp_path: Path) -> None:
    w = sl.sinks.parquet(tmp_path / "one.parquet").create_writer(0, 1)
    w.open()
    w.write(pl.DataFrame({"a": [1], "b": ["x"]}))
    w.write(pl.DataFrame({"b": [None], "a": [2]}))  # b is Null-typed here
    with pytest.raises(ValueError, match="do not match the file's"):
        w.write(pl.DataFrame({"z": [1]}))
    w.close()
    assert pl.read_parquet(tmp_path / "one.parquet").rows() == [(1, "x"), (2, None)]


def test_sink_config_errors(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("")
    with pytest.raises(sl.ConfigError, match="is a file"):
        sl.sinks.jsonl(tmp_path / "f.txt")
    with pytest.raises(sl.ConfigError, match="does not roll"):
        sl.sinks.parquet(tmp_path / "x.parquet", rolling_rows=10)
    with pytest.raises(sl.ConfigError, match="cannot parse 'lots'"):
        sl.sinks.csv(tmp_path, rolling_bytes="lots")
    with pytest.raises(sl.ConfigError, match="rolling_interval"):
        sl.sinks.csv(tmp_path, rolling_interval="soon")
