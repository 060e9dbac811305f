"""Checkpointable connectors: readers resume exactly where they stopped, file
sinks publish only committed output (two-phase commit)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice.connectors.base import ReaderContext, SinkWriter, SplitReader
from sluice.connectors.sources import _text
from sluice.connectors.sources.generator import _GeneratorSplit

# -- readers ----------------------------------------------------------------------------
Rows = tuple[pl.DataFrame, list[int], list[dict[str, Any]]]


def reader_of(source: sl.sources.FileSource) -> Callable[[], SplitReader]:
    """A factory of fresh readers of the source's (only) file, as a new process makes them."""

    def make() -> SplitReader:
        (reader,) = source.create_splits(1)
        return reader

    return make


def start(make: Callable[[], SplitReader]) -> tuple[SplitReader, ReaderContext]:
    ctx = ReaderContext("t", on_error="dead_letter")
    reader = make()
    reader.open(ctx)
    return reader, ctx


def read(
    make: Callable[[], SplitReader], max_rows: int, *, restart_after: Sequence[int] = ()
) -> Rows:
    """Read the split to its end, restarting from a snapshot after the given polls:
    the rows (with strict types), their line numbers and the dead letters."""
    reader, ctx = start(make)
    frames: list[pl.DataFrame] = []
    lines: list[int] = []
    dead: list[dict[str, Any]] = []
    polls = 0
    while not reader.finished:
        if polls in restart_after:
            state = json.loads(json.dumps(reader.snapshot()))
            reader.close()
            dead += ctx.dead_letters
            reader, ctx = start(make)
            reader.restore(state)
            assert reader.snapshot() == state  # restoring twice resumes at the same place
        batch = reader.poll(max_rows)
        polls += 1
        if batch is not None:
            frames.append(batch.data)
            lines += [batch.line_of(i) for i in range(batch.data.height)]
        assert polls < 10_000
    reader.close()
    dead += ctx.dead_letters
    return pl.concat(frames, how="diagonal"), lines, dead


def polls_needed(make: Callable[[], SplitReader], max_rows: int) -> int:
    reader, _ = start(make)
    n = 0
    while not reader.finished:
        reader.poll(max_rows)
        n += 1
    return n


def assert_resumes_exactly(make: Callable[[], SplitReader], sizes: tuple[int, ...]) -> None:
    """Restarting after any poll, or after every poll, reads the same rows, line
    numbers and bad records as reading the file in one go."""
    for max_rows in sizes:
        expected = read(make, max_rows)
        n = polls_needed(make, max_rows)
        for k in [*range(n + 1), -1]:
            after = list(range(n + 1)) if k == -1 else [k]
            got = read(make, max_rows, restart_after=after)
            assert got[0].equals(expected[0]), (max_rows, k)
            assert got[1:] == expected[1:], (max_rows, k)


JSONL = (
    '\ufeff{"id": 1, "price": 1.5, "tags": ["a"], "p": {"x": 1}}\r\n'
    "\r\n"
    '   \n{"id": 2, "price": 2.5, "tags": [], "p": {"x": 2}}\n'
    '{"id": 3, "price": null, "tags": null, "p": null}\n'
    '{"id": 4, "price": 7, "tags": ["b", "c"], "p": {"x": 4}}\r\n'
    "\n\n"
    '{"id": oops}\n'
    '{"id": 6, "price": 8, "tags": ["d"], "p": {"x": 6}, "late": "yes"}\n'
    "\t\n"
    '{"id": 7, "price": 9.25, "tags": [], "p": {"x": 7}}\n'
    '{"id": 8, "price": 10, "tags": ["e"], "p": {"x": 8}}'
)

CSV = (
    "id,note,price\r\n"
    '1,"a, b",1.5\r\n'
    "\r\n"
    '2,"two\nlines",2.5\n'
    "\n"
    '3,"say ""hi""",3\n'
    '4,"x\n\ny",4\n'
    "5,plain,\n"
    '6,"""quoted""\nand\nmore",6\n'
    "7,bad,7,extra\n"
    '8,"ok",8'
)


def test_jsonl_reader_resumes_exactly(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(JSONL.encode())
    make = reader_of(sl.sources.jsonl(path))
    rows, lines, dead = read(make, 3)
    assert rows["id"].to_list() == [1, 2, 3, 4, 6, 7, 8]
    assert rows.schema["price"] == pl.Float64  # learnt from the first chunk, kept after restarts
    assert lines == [1, 4, 5, 6, 10, 12, 13]
    assert [d["line"] for d in dead] == [9]
    assert_resumes_exactly(make, (1, 2, 3, 5, 100))


def test_csv_reader_resumes_exactly_across_multi_line_records(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(CSV.encode())
    make = reader_of(sl.sources.csv(path))
    rows, lines, dead = read(make, 2)
    assert rows["id"].to_list() == [1, 2, 3, 4, 5, 6, 8]
    assert rows["note"].to_list()[1] == "two\nlines"
    assert rows.schema["price"] == pl.Float64
    assert lines == [2, 4, 7, 8, 11, 12, 16]
    assert [d["line"] for d in dead] == [15]
    assert_resumes_exactly(make, (1, 2, 3, 4, 100))


def test_csv_reader_resumes_without_header_and_in_latin1(tmp_path: Path) -> None:
    path = tmp_path / "a.tsv"
    path.write_bytes('1\tZoë\n2\t"é\n"\n\n3\tx\n'.encode("latin-1"))
    make = reader_of(sl.sources.csv(path, has_header=False, separator="\t", encoding="latin-1"))
    assert read(make, 1)[0]["column_1"].to_list() == ["Zoë", "é\n", "x"]
    assert_resumes_exactly(make, (1, 2))


def test_csv_header_with_non_ascii_names_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("prénom,n\nana,1\nbo,2\ncy,3\n")
    make = reader_of(sl.sources.csv(path))
    assert read(make, 1, restart_after=[1, 2])[0].columns == ["prénom", "n"]
    assert_resumes_exactly(make, (1,))


def test_parquet_reader_resumes_at_the_right_row_group(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    df = pl.DataFrame({"x": range(50), "s": [f"r{i}" for i in range(50)]})
    df.write_parquet(path, row_group_size=7)
    make = reader_of(sl.sources.parquet(path))
    rows, lines, _ = read(make, 10)
    assert rows.equals(df) and lines == list(range(50))
    assert_resumes_exactly(make, (3, 7, 10, 64))


def test_resuming_a_replaced_shorter_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    reader, _ = start(reader_of(sl.sources.jsonl(path)))
    assert reader.poll(10) is not None
    state = reader.snapshot()
    path.write_text('{"a": 1}\n')
    fresh, _ = start(reader_of(sl.sources.jsonl(path)))
    with pytest.raises(sl.ConfigError, match="replaced or truncated"):
        fresh.restore(state)
    pq = tmp_path / "b.parquet"
    pl.DataFrame({"x": range(5)}).write_parquet(pq)
    reader, _ = start(reader_of(sl.sources.parquet(pq)))
    reader.restore({"row": 9})
    with pytest.raises(sl.ConfigError, match="only 5 rows"):
        reader.poll(10)


def drain(reader: SplitReader, max_rows: int) -> list[int]:
    """Poll a followed file until nothing more comes; return the ``id`` values read."""
    ids: list[int] = []
    idle = 0
    while idle < 3:
        batch = reader.poll(max_rows)
        if batch is None:
            idle += 1
        else:
            idle = 0
            ids += batch.data["id"].to_list()
    return ids


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_followed_file_resumes_inside_an_unfinished_line(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_text, "RECHECK_S", 0.0)
    path = tmp_path / f"log.{fmt}"
    if fmt == "jsonl":
        first, rest = '{"id": 1}\n\n{"id": 2}\n{"id": ', '3}\n{"id": 4}\n'
    else:
        first, rest = 'id,note\n1,a\n2,"multi\nline', ' end"\n3,c\n4,d\n'
    path.write_text(first)
    source = sl.sources.files(path, follow=True)
    make = reader_of(source)
    reader, _ = start(make)
    before = drain(reader, 1)
    state = json.loads(json.dumps(reader.snapshot()))
    reader.close()
    with path.open("a") as f:
        f.write(rest)
    resumed, _ = start(make)
    resumed.restore(state)
    after = drain(resumed, 1)
    assert before + after == [1, 2, 3, 4]
    assert not resumed.finished  # a followed file never ends


# -- generator ------------------------------------------------------------------------
def numbered(start: int, n: int) -> pl.DataFrame:
    return pl.DataFrame({"i": pl.int_range(start, start + n, eager=True)})


def test_generator_splits_resume_exactly() -> None:
    src = sl.sources.generator(numbered, count=2_345, batch_size=500, parallelism_splits=2)
    splits = src.create_splits(1)
    assert [s.split_id for s in splits] == ["gen-0", "gen-1"]

    def run(split_no: int, restart_after: set[int]) -> list[int]:
        split = src.create_splits(1)[split_no]
        out: list[int] = []
        polls = 0
        while not split.finished:
            if polls in restart_after:
                state = json.loads(json.dumps(split.snapshot()))
                split = src.create_splits(1)[split_no]
                split.restore(state)
            batch = split.poll(300)
            polls += 1
            if batch is not None:
                out += batch.data["i"].to_list()
        return out

    for split_no in (0, 1):
        expected = run(split_no, set())
        for k in range(len(expected) // 300 + 3):
            assert run(split_no, {k}) == expected, (split_no, k)
        assert run(split_no, set(range(100))) == expected
    assert sorted(run(0, set()) + run(1, set())) == list(range(2_345))


def test_generator_restore_checks_the_split_layout() -> None:
    (one,) = sl.sources.generator(numbered, count=10).create_splits(1)
    state = one.snapshot()
    two = sl.sources.generator(numbered, count=10).create_splits(2)
    with pytest.raises(sl.ConfigError, match="1 splits, this run has 2"):
        two[0].restore(state)


def test_rate_limited_generator_does_not_wait_for_the_rows_of_the_earlier_run() -> None:
    (split,) = sl.sources.generator(numbered, rate=10).create_splits(1)
    assert isinstance(split, _GeneratorSplit)
    split.restore({"n_splits": 1, "block": 0, "in_block": 5_000, "emitted": 5_000})
    batch = split.poll(100)
    assert batch is not None and batch.data["i"].to_list() == [5_000]


# -- file sinks: two-phase commit ---------------------------------------------------------
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


def visible(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def hidden(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("."))


def txn_writer(sink: sl.sinks.FileSink, subtask: int = 0) -> SinkWriter:
    w = sink.create_writer(subtask, 1)
    w.transactional = True
    w.open()
    return w


def rows(*xs: int) -> pl.DataFrame:
    return pl.DataFrame({"x": list(xs)})


def read_dir(directory: Path, fmt: str) -> list[int]:
    names = visible(directory)
    if not names:
        return []
    return sorted(pl.concat([READ[fmt](directory / n) for n in names])["x"].to_list())


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_part_files_are_visible_only_once_committed(tmp_path: Path, fmt: str) -> None:
    sink = SINKS[fmt](tmp_path, rolling_rows=2)
    assert sink.exactly_once
    w = txn_writer(sink)
    for x in (1, 2, 3):
        w.write(rows(x))  # rolls after 2 rows: the rolled file is pending, not published
    assert visible(tmp_path) == []
    txn1 = w.pre_commit(1)
    assert txn1 == {
        "files": [
            [f".part-0-00000.{fmt}.pending", f"part-0-00000.{fmt}"],
            [f".part-0-00001.{fmt}.pending", f"part-0-00001.{fmt}"],
        ]
    }
    assert visible(tmp_path) == []
    if fmt == "parquet":
        with pytest.raises(pl.exceptions.ComputeError, match="expanded paths were empty"):
            pl.read_parquet(tmp_path / "*.parquet")
    w.commit(1, txn1)
    assert read_dir(tmp_path, fmt) == [1, 2, 3]
    assert hidden(tmp_path) == []
    w.commit(1, txn1)  # idempotent
    w.write(rows(4))
    assert w.pre_commit(2) == {"files": [[f".part-0-00002.{fmt}.pending", f"part-0-00002.{fmt}"]]}
    w.close()  # publishes nothing in a transaction
    assert read_dir(tmp_path, fmt) == [1, 2, 3]


def crash_after_checkpoint_2(directory: Path, fmt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Checkpoint 1 committed, checkpoint 2 pre-committed, more rows in progress, then
    the process dies (the writer is dropped without close)."""
    w = txn_writer(SINKS[fmt](directory, rolling_rows=3))
    w.write(rows(1, 2))
    txn1 = w.pre_commit(1)
    w.commit(1, txn1)
    w.write(rows(3, 4, 5))  # rolls: pending
    w.write(rows(6))
    txn2 = w.pre_commit(2)
    w.write(rows(7))  # in progress
    assert len(hidden(directory)) == 3
    return txn1, txn2


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_recovery_keeps_the_restored_checkpoint_and_drops_later_output(
    tmp_path: Path, fmt: str
) -> None:
    txn1, _ = crash_after_checkpoint_2(tmp_path, fmt)
    sink = SINKS[fmt](tmp_path)
    sink.recover([txn1])
    assert read_dir(tmp_path, fmt) == [1, 2]
    assert hidden(tmp_path) == []
    sink.recover([txn1])  # idempotent
    # The restarted job writes new part files; committed ones are never overwritten.
    w = txn_writer(sink)
    w.write(rows(3, 4, 5, 6, 7))
    w.commit(2, w.pre_commit(2))
    assert read_dir(tmp_path, fmt) == [1, 2, 3, 4, 5, 6, 7]
    assert visible(tmp_path) == [f"part-0-0000{i}.{fmt}" for i in range(2)]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_recovery_publishes_a_checkpoint_that_was_not_committed(tmp_path: Path, fmt: str) -> None:
    _, txn2 = crash_after_checkpoint_2(tmp_path, fmt)
    sink = SINKS[fmt](tmp_path)
    sink.recover([txn2])
    assert read_dir(tmp_path, fmt) == [1, 2, 3, 4, 5, 6]
    assert hidden(tmp_path) == []  # row 7 (in progress) is replayed by the job
    w = txn_writer(sink)
    w.write(rows(7))
    w.commit(3, w.pre_commit(3))
    assert visible(tmp_path) == [f"part-0-0000{i}.{fmt}" for i in range(4)]
    assert read_dir(tmp_path, fmt) == list(range(1, 8))


def test_a_later_checkpoint_carries_the_files_of_an_uncommitted_earlier_one(
    tmp_path: Path,
) -> None:
    w = txn_writer(sl.sinks.jsonl(tmp_path))
    w.write(rows(1))
    txn1 = w.pre_commit(1)
    w.write(rows(2))
    txn2 = w.pre_commit(2)
    assert txn2["files"][:1] == txn1["files"] and len(txn2["files"]) == 2
    w.commit(2, txn2)
    w.commit(1, txn1)  # late: already published
    assert w.pre_commit(3) == {"files": []}
    assert read_dir(tmp_path, "jsonl") == [1, 2]


def test_recovery_with_another_parallelism_publishes_every_old_subtask(tmp_path: Path) -> None:
    sink = sl.sinks.parquet(tmp_path)
    txns = []
    for subtask in range(3):
        w = sink.create_writer(subtask, 3)
        w.transactional = True
        w.open()
        w.write(rows(subtask))
        txns.append(w.pre_commit(5))
    new = sl.sinks.parquet(tmp_path)
    new.recover(txns)
    assert visible(tmp_path) == [f"part-{i}-00000.parquet" for i in range(3)]
    assert sorted(pl.read_parquet(tmp_path / "*.parquet")["x"].to_list()) == [0, 1, 2]


def test_a_lost_pending_file_is_a_clear_error(tmp_path: Path) -> None:
    w = txn_writer(sl.sinks.csv(tmp_path))
    w.write(rows(1))
    txn = w.pre_commit(1)
    (tmp_path / ".part-0-00000.csv.pending").unlink()
    with pytest.raises(sl.JobError, match=r"cannot commit '\.part-0-00000\.csv\.pending'"):
        w.commit(1, txn)


def test_recovery_leaves_other_sinks_files_alone(tmp_path: Path) -> None:
    (tmp_path / ".part-0-00000.csv.pending").write_text("x\n1\n")
    (tmp_path / ".notes.inprogress").write_text("")
    sl.sinks.jsonl(tmp_path).recover([])
    assert hidden(tmp_path) == [".notes.inprogress", ".part-0-00000.csv.pending"]


# -- single files: segments appended on commit --------------------------------------------
def read_single(path: Path, fmt: str) -> list[int]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    return READ[fmt](path)["x"].to_list()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_single_file_grows_a_checkpoint_at_a_time(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"out.{fmt}"
    sink = SINKS[fmt](path)
    assert sink.exactly_once
    w = txn_writer(sink)
    w.write(rows(1, 2))
    w.write(rows(3))
    txn1 = w.pre_commit(1)
    assert read_single(path, fmt) == []
    w.commit(1, txn1)
    assert read_single(path, fmt) == [1, 2, 3]
    w.write(rows(4))
    txn2 = w.pre_commit(2)
    assert read_single(path, fmt) == [1, 2, 3]
    w.commit(2, txn2)
    w.commit(2, txn2)  # idempotent
    assert read_single(path, fmt) == [1, 2, 3, 4]
    assert w.pre_commit(3) == {"segments": []}
    w.close()
    assert hidden(tmp_path) == []
    if fmt == "csv":
        assert path.read_text() == "x\n1\n2\n3\n4\n"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("restore", [1, 2])
def test_single_file_recovery_and_resume(tmp_path: Path, fmt: str, restore: int) -> None:
    path = tmp_path / f"out.{fmt}"
    w = txn_writer(SINKS[fmt](path))
    w.write(rows(1, 2))
    txn1 = w.pre_commit(1)
    w.commit(1, txn1)
    w.write(rows(3))
    txn2 = w.pre_commit(2)
    w.write(rows(4))  # then the process dies
    sink = SINKS[fmt](path)
    sink.recover([txn1 if restore == 1 else txn2])
    committed = [1, 2] if restore == 1 else [1, 2, 3]
    assert read_single(path, fmt) == committed
    assert hidden(tmp_path) == []
    w = txn_writer(sink)  # the restarted job continues the file
    replay = [3, 4] if restore == 1 else [4]
    w.write(rows(*replay))
    w.commit(3, w.pre_commit(3))
    assert read_single(path, fmt) == [1, 2, 3, 4]
    if fmt == "csv":
        assert path.read_text() == "x\n1\n2\n3\n4\n"


def test_single_text_file_append_is_redone_after_a_crash_half_way(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    w = txn_writer(sl.sinks.jsonl(path))
    w.write(rows(1))
    w.commit(1, w.pre_commit(1))
    w.write(rows(2, 3))
    txn = w.pre_commit(2)
    ((segment, _, before, _),) = txn["segments"]
    with path.open("ab") as f:  # the crash left half of the segment appended
        f.write((tmp_path / segment).read_bytes()[:5])
    sl.sinks.jsonl(path).recover([txn])
    assert read_single(path, "jsonl") == [1, 2, 3] and before == len('{"x":1}\n')


def test_new_single_file_job_replaces_the_file_and_its_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("x\n9\n")
    (tmp_path / ".out.csv.00004.pending").write_text("x\n8\n")
    w = txn_writer(sl.sinks.csv(path))
    assert path.read_text() == "" and hidden(tmp_path) == []
    w.write(rows(1))
    w.commit(1, w.pre_commit(1))
    assert path.read_text() == "x\n1\n"
