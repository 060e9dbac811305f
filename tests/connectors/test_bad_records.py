"""Bad input in files: errors name source, file and line; dead letters keep the rest going."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from tests.connectors.data import run_to

GOOD = '{{"user": "u{i}", "v": {i}, "ts": "2024-01-01T00:00:0{i}"}}'


def jsonl_file(path: Path, bad: dict[int, str], n: int = 9) -> Path:
    """``n`` lines; line ``k`` (1-based) replaced by ``bad[k]`` when given."""
    lines = [bad.get(k, GOOD.format(i=k)) for k in range(1, n + 1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_dead_letters(
    source: sl.sources.FileSource, **kwargs: object
) -> tuple[pl.DataFrame, pl.DataFrame]:
    flow = sl.Flow("dl", max_batch_rows=4)
    good, bad = sl.sinks.collect(), sl.sinks.collect()
    s = flow.source(source, on_error="dead_letter", name="events", **kwargs)  # type: ignore[arg-type]
    s.sink(good)
    s.dead_letters().sink(bad)
    flow.run()
    return good.to_polars(), bad.to_polars()


@pytest.mark.parametrize("max_rows", [1, 4, 1000])
def test_bad_json_line_names_file_and_line(tmp_path: Path, max_rows: int) -> None:
    path = jsonl_file(tmp_path / "e.jsonl", {3: "", 7: '{"user": "u7", "v": '})
    with pytest.raises(sl.BadRecordError) as e:
        run_to(sl.sources.jsonl(path), time="ts", max_batch_rows=max_rows, name="events")
    msg = str(e.value)
    assert f"file {path}, line 7" in msg and "'events'" in msg and "invalid JSON" in msg
    assert e.value.line == 7 and e.value.file == str(path)


def test_bad_json_goes_to_dead_letters_and_good_rows_pass(tmp_path: Path) -> None:
    path = jsonl_file(
        tmp_path / "e.jsonl", {2: "[1, 2]", 5: '{"user": "u5", "v": 5', 6: "{} {}", 8: "NaN"}
    )
    good, bad = run_dead_letters(sl.sources.jsonl(path), time="ts")
    assert good["v"].to_list() == [1, 3, 4, 7, 9]
    assert bad.select("source", "file", "line").rows() == [
        ("events", str(path), 2),
        ("events", str(path), 5),
        ("events", str(path), 6),
        ("events", str(path), 8),
    ]
    assert bad["raw"].to_list() == ["[1, 2]", '{"user": "u5", "v": 5', "{} {}", "NaN"]
    reasons = bad["reason"].to_list()
    assert "expected a JSON object per line, got list" in reasons[0]
    assert all(r.startswith("invalid JSON") for r in reasons[1:])


def test_invalid_utf8_line_is_a_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n{"a": 3}\n')
    good, bad = run_dead_letters(sl.sources.jsonl(path))
    assert good["a"].to_list() == [1, 3]
    assert bad["line"].to_list() == [2] and "not valid utf-8" in bad["reason"][0]


def test_conflicting_types_in_one_chunk_report_the_odd_line(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": true}\n{"a": 4}\n')
    with pytest.raises(sl.BadRecordError, match=r"line 3: the record does not fit the types"):
        run_to(sl.sources.jsonl(path))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_unparsable_timestamp_names_the_line(tmp_path: Path, fmt: str) -> None:
    if fmt == "jsonl":
        path = jsonl_file(tmp_path / "e.jsonl", {6: '{"user": "u6", "v": 6, "ts": "soon"}'})
        src: sl.sources.FileSource = sl.sources.jsonl(path)
        line = 6
    else:
        # Line 3 starts a record whose quoted field spans two lines.
        path = tmp_path / "e.csv"
        path.write_text(
            'user,v,ts\na,1,2024-01-01\n"b\nb",2,2024-01-02\nc,3,soon\nd,4,2024-01-04\n'
        )
        src = sl.sources.csv(path)
        line = 5
    with pytest.raises(sl.BadRecordError) as e:
        run_to(src, time="ts", max_batch_rows=3)
    assert f"file {path}, line {line}" in str(e.value)
    assert "cannot parse event time 'soon'" in str(e.value)


@pytest.mark.parametrize(
    "missing", ['{"user": "u4", "v": 4}', '{"user": "u4", "v": 4, "ts": null}']
)
def test_missing_timestamp_names_the_line(tmp_path: Path, missing: str) -> None:
    path = jsonl_file(tmp_path / "e.jsonl", {4: missing})
    with pytest.raises(sl.BadRecordError, match=r"line 4: event-time column 'ts' is missing"):
        run_to(sl.sources.jsonl(path), time="ts", max_batch_rows=3)
    good, bad = run_dead_letters(sl.sources.jsonl(path), time="ts")
    assert good.height == 8 and bad["line"].to_list() == [4]


def test_value_of_the_wrong_type_for_a_declared_schema(tmp_path: Path) -> None:
    path = jsonl_file(tmp_path / "e.jsonl", {5: '{"user": "u5", "v": "five", "ts": "2024-01-01"}'})
    schema = {"user": str, "v": int, "ts": str}
    with pytest.raises(sl.BadRecordError) as e:
        run_to(sl.sources.jsonl(path), time="ts", schema=schema, max_batch_rows=3)
    assert f"file {path}, line 5" in str(e.value) and "'v'" in str(e.value)
    good, bad = run_dead_letters(sl.sources.jsonl(path), time="ts", schema=schema)
    assert good["v"].to_list() == [1, 2, 3, 4, 6, 7, 8, 9]
    assert bad["line"].to_list() == [5] and "five" in bad["reason"][0]


def test_type_change_in_a_later_chunk_names_the_line(tmp_path: Path) -> None:
    # Without schema=, the first chunk fixes the types; "x" on line 7 does not fit Int64.
    path = tmp_path / "e.csv"
    path.write_text("v\n" + "".join(f"{i}\n" for i in range(5)) + "x\n7\n")
    with pytest.raises(sl.BadRecordError, match=r"line 7: field 'v' has value 'x'"):
        run_to(sl.sources.csv(path), max_batch_rows=3)


def test_csv_rows_with_too_many_fields_or_broken_quotes(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text('a,b\n1,2\n3,4,5\n6,7\n8,"x"y\n9,10\n11,"open\n')
    good, bad = run_dead_letters(sl.sources.csv(path))
    assert good.rows() == [(1, 2), (6, 7), (9, 10)]
    assert bad["line"].to_list() == [3, 5, 7]
    assert "expected 2 fields, found 3" in bad["reason"][0]
    assert bad["raw"].to_list() == ["3,4,5", '8,"x"y', '11,"open']


def test_parquet_bad_timestamp_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pl.DataFrame({"ts": ["2024-01-01", "2024-01-02", "never"]}).write_parquet(path)
    with pytest.raises(sl.BadRecordError, match=rf"file {path}, line 2: cannot parse event time"):
        run_to(sl.sources.parquet(path), time="ts")


def test_unreadable_parquet_file_is_a_bad_record(tmp_path: Path) -> None:
    pl.DataFrame({"x": [1, 2]}).write_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(sl.BadRecordError, match="cannot read Parquet file"):
        run_to(sl.sources.parquet(tmp_path))
    good, bad = run_dead_letters(sl.sources.parquet(tmp_path))
    assert good["x"].to_list() == [1, 2]
    assert bad["file"].to_list() == [str(tmp_path / "b.parquet")]


def test_invalid_utf8_in_csv_is_a_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(b"a,b\n1,x\n2,\xff\n3,z\n")
    good, bad = run_dead_letters(sl.sources.csv(path))
    assert good.rows() == [(1, "x"), (3, "z")]
    assert bad["line"].to_list() == [3] and "not valid utf-8" in bad["reason"][0]


def test_corrupt_row_group_of_parquet_names_its_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    strings = [f"value-{i * 7919 % 100_003:06d}-{i}" for i in range(3000)]
    pq.write_table(
        pa.table({"x": list(range(3000)), "s": strings}),
        path,
        row_group_size=1000,
        compression="zstd",
    )
    col = pq.ParquetFile(path).metadata.row_group(1).column(1)
    data = bytearray(path.read_bytes())
    for i in range(col.data_page_offset + 8, col.data_page_offset + col.total_compressed_size):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(sl.BadRecordError, match=rf"file {path}, line 1000: cannot read rows"):
        run_to(sl.sources.parquet(path))
    good, bad = run_dead_letters(sl.sources.parquet(path))
    # the rows of the intact row groups go on; the unreadable ones are reported
    # (a range per chunk), never dropped silently
    assert good["x"].to_list()[:1000] == list(range(1000))
    assert good["s"].to_list()[:1000] == strings[:1000]
    assert bad["line"].to_list()[0] == 1000 and "rows 1000..1999" in bad["reason"][0]
    reported = sum(
        int(hi) - int(lo) + 1
        for lo, hi in bad["reason"]
        .str.extract_groups(r"rows (\d+)\.\.(\d+)")
        .struct.unnest()
        .rows()
    )
    assert good.height + reported == 3000
