"""File sources: what comes out of a flow equals what Polars reads from the files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from sluice.connectors.base import ReaderContext
from sluice.connectors.sources.files import JsonlReader, ParquetReader
from tests.connectors.data import events, run_to, write_parts
from tests.helpers import same_rows

READERS: dict[str, Callable[[list[Path]], pl.DataFrame]] = {
    "jsonl": lambda paths: pl.concat([pl.read_ndjson(p) for p in paths]),
    "csv": lambda paths: pl.concat([pl.read_csv(p) for p in paths]),
    "parquet": lambda paths: pl.concat([pl.read_parquet(p) for p in paths]),
}
SOURCES: dict[str, Callable[..., sl.sources.FileSource]] = {
    "jsonl": sl.sources.jsonl,
    "csv": sl.sources.csv,
    "parquet": sl.sources.parquet,
}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_round_trip_through_a_flow_into_parquet(tmp_path: Path, fmt: str) -> None:
    df = events(1000)
    paths = write_parts(df, tmp_path / "in", fmt, parts=4)
    out = tmp_path / "out"
    flow = sl.Flow("rt", max_batch_rows=128)
    flow.source(SOURCES[fmt](tmp_path / "in"), time="ts").sink(sl.sinks.parquet(out))
    flow.run()
    expected = READERS[fmt](paths)
    got = pl.read_parquet(sorted(out.glob("*.parquet")))
    assert got.schema == expected.schema
    assert same_rows(expected, got)
    # The splits (files) are read side by side, each in its own order.
    for path in paths:
        ids = READERS[fmt]([path])["id"]
        assert got.filter(pl.col("id").is_in(ids.implode()))["id"].equals(ids)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_parallelism_1_and_3_give_the_same_rows(tmp_path: Path, fmt: str) -> None:
    paths = write_parts(events(500, seed=1), tmp_path, fmt, parts=5)
    one = run_to(SOURCES[fmt](tmp_path), time="ts", max_batch_rows=50)
    three = run_to(SOURCES[fmt](tmp_path), time="ts", max_batch_rows=50, parallelism=3)
    expected = READERS[fmt](paths)
    assert same_rows(expected, one)
    assert same_rows(expected, three)


def test_glob_picks_only_matching_files(tmp_path: Path) -> None:
    a = events(30, seed=2)
    b = events(20, seed=3)
    a.write_ndjson(tmp_path / "a-1.jsonl")
    b.write_ndjson(tmp_path / "b-1.jsonl")
    got = run_to(sl.sources.jsonl(str(tmp_path / "a-*.jsonl")), time="ts")
    assert got.equals(a)


def test_recursive_glob(tmp_path: Path) -> None:
    a, b = events(10, seed=4), events(15, seed=5)
    (tmp_path / "x" / "y").mkdir(parents=True)
    a.write_csv(tmp_path / "x" / "a.csv")
    b.write_csv(tmp_path / "x" / "y" / "b.csv")
    got = run_to(sl.sources.csv(str(tmp_path / "**" / "*.csv")))
    assert same_rows(pl.concat([a, b]), got)


def test_directory_skips_hidden_and_other_files(tmp_path: Path) -> None:
    df = events(10)
    df.write_ndjson(tmp_path / "a.jsonl")
    df.write_ndjson(tmp_path / ".part-0-00000.jsonl.inprogress")
    df.write_ndjson(tmp_path / "_tmp.jsonl")
    df.write_csv(tmp_path / "c.csv")
    src = sl.sources.jsonl(tmp_path)
    assert src.list_files() == [str(tmp_path / "a.jsonl")]
    assert run_to(src).equals(df)


def test_one_split_per_file_named_by_path(tmp_path: Path) -> None:
    paths = write_parts(events(20), tmp_path, "jsonl", parts=3)
    splits = sl.sources.jsonl(tmp_path).create_splits(2)
    assert [s.split_id for s in splits] == [str(p) for p in paths]


def test_later_chunks_keep_the_types_of_the_first(tmp_path: Path) -> None:
    # The second chunk holds only nulls and whole numbers for "price"; it is still Float64.
    lines = ['{"price": 1.5, "tag": "a"}'] * 3 + ['{"price": null, "tag": null}'] * 3
    lines += ['{"price": 2, "tag": "b"}'] * 3
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    got = run_to(sl.sources.jsonl(tmp_path / "a.jsonl"), max_batch_rows=3)
    assert got.schema == pl.Schema({"price": pl.Float64, "tag": pl.String})
    assert got["price"].to_list() == [1.5] * 3 + [None] * 3 + [2.0] * 3


def test_jsonl_blank_lines_crlf_bom_and_no_final_newline(tmp_path: Path) -> None:
    text = '\ufeff{"a": 1}\r\n\r\n   \n{"a": 2}\r\n\n{"a": 3}'
    (tmp_path / "a.jsonl").write_bytes(text.encode("utf-8"))
    got = run_to(sl.sources.jsonl(tmp_path / "a.jsonl"), max_batch_rows=2)
    assert got["a"].to_list() == [1, 2, 3]


def test_jsonl_latin1_encoding(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes('{"name": "Zoë"}\n'.encode("latin-1"))
    got = run_to(sl.sources.jsonl(tmp_path / "a.jsonl", encoding="latin-1"))
    assert got["name"].to_list() == ["Zoë"]


def test_csv_quoted_fields_with_newlines_separators_and_quotes(tmp_path: Path) -> None:
    text = 'id,note\n1,"a, b"\n2,"two\nlines"\n\n3,"say ""hi"""\n4,plain\n'
    path = tmp_path / "a.csv"
    path.write_text(text)
    expected = pl.read_csv(path)
    for rows in (1, 2, 100):
        got = run_to(sl.sources.csv(path), max_batch_rows=rows)
        assert got.equals(expected.filter(pl.col("id").is_not_null())), rows
    assert got["note"].to_list() == ["a, b", "two\nlines", 'say "hi"', "plain"]


def test_csv_without_header_and_other_separator(tmp_path: Path) -> None:
    path = tmp_path / "a.tsv"
    path.write_text("1\tx\n2\ty\n")
    got = run_to(sl.sources.csv(path, has_header=False, separator="\t"))
    assert got.equals(pl.read_csv(path, has_header=False, separator="\t"))


def test_files_infers_the_format(tmp_path: Path) -> None:
    df = events(10)
    df.write_parquet(tmp_path / "a.parquet")
    src = sl.sources.files(tmp_path)
    assert isinstance(src, sl.sources.ParquetSource)
    assert run_to(src).equals(df)
    assert isinstance(
        sl.sources.files(tmp_path, format="ndjson", follow=True), sl.sources.JsonlSource
    )
    with pytest.raises(sl.ConfigError, match="unknown format 'xml'"):
        sl.sources.files(tmp_path, format="xml")


def test_missing_path_is_a_config_error_at_construction(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(sl.ConfigError, match=r"nope\.jsonl.*does not exist"):
        sl.sources.jsonl(missing)
    with pytest.raises(sl.ConfigError, match="no file matches"):
        sl.sources.csv(str(tmp_path / "*.csv"))
    with pytest.raises(sl.ConfigError, match=r"has no \.parquet"):
        sl.sources.parquet(tmp_path)
    with pytest.raises(sl.ConfigError, match="not ASCII-compatible"):
        sl.sources.jsonl(tmp_path, encoding="utf-16", follow=True)


def test_reader_positions_count_bytes_and_rows(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n')
    (reader,) = sl.sources.jsonl(path).create_splits(1)
    assert isinstance(reader, JsonlReader)
    reader.open(ReaderContext("t"))
    batch = reader.poll(2)
    assert batch is not None and batch.data["a"].to_list() == [1, 2]
    assert reader.position() == len('{"a": 1}\n{"a": 2}\n')
    pl.DataFrame({"x": range(10)}).write_parquet(tmp_path / "b.parquet")
    (pq,) = sl.sources.parquet(tmp_path / "b.parquet").create_splits(1)
    assert isinstance(pq, ParquetReader)
    assert pq.poll(4) is not None and pq.position() == 4


def test_a_key_that_first_appears_late_in_a_chunk_is_kept(tmp_path: Path) -> None:
    lines = [f'{{"a": {i}}}' for i in range(3000)]
    lines[2500] = '{"a": 2500, "late": "here"}'
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n")
    got = run_to(sl.sources.jsonl(path))
    assert got.equals(pl.read_ndjson(path, infer_schema_length=None))
    assert got["late"].drop_nulls().to_list() == ["here"]


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_parquet_reader_resumes_at_every_row_across_row_groups_and_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sluice.connectors.sources import files

    monkeypatch.setattr(files, "_PARQUET_CHUNK_ROWS", chunk)
    path = tmp_path / "g.parquet"
    n = 95
    with pq.ParquetWriter(path, pa.schema([("x", pa.int64()), ("s", pa.string())])) as w:
        at = 0
        for size in (10, 1, 33, 17, 34):  # uneven row groups
            w.write_table(
                pa.table({"x": range(at, at + size), "s": [f"r{i}" for i in range(at, at + size)]})
            )
            at += size
    assert pq.ParquetFile(path).metadata.num_row_groups == 5

    def rest(reader: ParquetReader, max_rows: int) -> list[int]:
        got: list[int] = []
        while (b := reader.poll(max_rows)) is not None:
            assert b.data.height <= max_rows
            assert b.lines is not None and b.lines.tolist() == b.data["x"].to_list()
            got += b.data["x"].to_list()
        return got

    for max_rows in (1, 4, 50):
        (r,) = sl.sources.parquet(path, columns=["x"]).create_splits(1)
        assert isinstance(r, ParquetReader)
        r.open(ReaderContext("t"))
        assert rest(r, max_rows) == list(range(n))
    for start in range(n + 1):
        (r,) = sl.sources.parquet(path).create_splits(1)
        assert isinstance(r, ParquetReader)
        r.open(ReaderContext("t"))
        r.restore({"row": start})
        assert rest(r, 6) == list(range(start, n))
        assert r.position() == n


def test_many_parquet_files_read_at_once_share_the_decode_ahead_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sluice.connectors.sources import files

    monkeypatch.setattr(files, "_PARQUET_AHEAD_BUDGET", 2)
    held: list[int] = []
    reserve = files._reserve_ahead

    def spy() -> bool:
        ok = reserve()
        held.append(files._ahead_held)
        return ok

    monkeypatch.setattr(files, "_reserve_ahead", spy)
    (tmp_path / "in").mkdir()
    frames = []
    for i in range(8):
        df = pl.DataFrame({"x": range(i * 1000, (i + 1) * 1000), "ts": 0})
        df.write_parquet(tmp_path / "in" / f"p{i}.parquet", row_group_size=200)
        frames.append(df)
    out = sl.sinks.collect()
    flow = sl.Flow("many", max_batch_rows=100)
    flow.source(sl.sources.parquet(tmp_path / "in"), time="ts").sink(out)
    flow.run()
    assert sorted(out.to_polars()["x"].to_list()) == list(range(8000))
    assert held and max(held) <= 2  # never more than the budget ahead, all files together
    assert files._ahead_held == 0  # every unit given back
