"""follow=True: files are tailed and new files are picked up while the flow runs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from tests.connectors.data import events

WRITERS: dict[str, Callable[[pl.DataFrame, Path], object]] = {
    "jsonl": lambda df, p: df.write_ndjson(p),
    "csv": lambda df, p: df.write_csv(p),
    "parquet": lambda df, p: df.write_parquet(p),
}
SOURCES: dict[str, Callable[..., sl.sources.FileSource]] = {
    "jsonl": sl.sources.jsonl,
    "csv": sl.sources.csv,
    "parquet": sl.sources.parquet,
}


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@contextmanager
def running(source: sl.sources.FileSource, **kwargs: object) -> Iterator[sl.sinks.CollectSink]:
    """Run ``source`` into a collect sink in a background thread until the block ends."""
    flow = sl.Flow("follow")
    out = sl.sinks.collect()
    flow.source(source, **kwargs).sink(out)  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            flow.run(timeout=20)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield out
    finally:
        flow.stop()
        t.join(10)
    assert not t.is_alive()
    if errors:
        raise errors[0]


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def test_follow_is_unbounded_and_replayable(tmp_path: Path) -> None:
    src = sl.sources.jsonl(tmp_path, follow=True)
    assert not src.bounded and src.replayable
    assert sl.sources.jsonl(str(tmp_path / "*.jsonl"), follow=True).list_files() == []


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_new_files_are_picked_up(tmp_path: Path, fmt: str) -> None:
    first, second = events(50, seed=1), events(70, seed=2)
    write = WRITERS[fmt]
    write(first, tmp_path / f"a.{fmt}")
    src = SOURCES[fmt]
    with running(src(tmp_path, follow=True), time="ts") as out:
        assert wait_for(lambda: len(out) == 50)
        atomic_write(tmp_path / f"b.{fmt}", lambda p: write(second, p))
        assert wait_for(lambda: len(out) == 120)
    got = out.to_polars()
    assert got.slice(0, 50).equals(first) and got.slice(50).equals(second)


def test_jsonl_waits_for_the_newline_of_a_half_written_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')
    with running(sl.sources.jsonl(path, follow=True)) as out:
        assert wait_for(lambda: len(out) == 1)
        time.sleep(0.3)
        assert len(out) == 1  # {"a": 2 is not complete yet
        with path.open("a") as f:
            f.write('2}\n{"a": 3}\n')
        assert wait_for(lambda: len(out) == 3)
        with path.open("a") as f:
            f.write('{"a": 4}\n')
        assert wait_for(lambda: len(out) == 4)
    assert out.to_polars()["a"].to_list() == [1, 22, 3, 4]


def test_csv_tail_keeps_the_header_and_quoted_newlines(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text('a,note\n1,"x\n')
    with running(sl.sources.csv(path, follow=True)) as out:
        time.sleep(0.3)
        assert len(out) == 0  # the quoted field is still open
        with path.open("a") as f:
            f.write('y"\n2,z\n')
        assert wait_for(lambda: len(out) == 2)
    assert out.rows() == [{"a": 1, "note": "x\ny"}, {"a": 2, "note": "z"}]


def test_bad_line_in_a_followed_file_is_a_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n')
    flow = sl.Flow("follow")
    good, bad = sl.sinks.collect(), sl.sinks.collect()
    s = flow.source(sl.sources.jsonl(tmp_path, follow=True), on_error="dead_letter")
    s.sink(good)
    s.dead_letters().sink(bad)
    t = threading.Thread(target=flow.run, kwargs={"timeout": 20}, daemon=True)
    t.start()
    try:
        assert wait_for(lambda: len(good) == 1)
        with path.open("a") as f:
            f.write('{"a": oops}\n{"a": 3}\n')
        assert wait_for(lambda: len(good) == 2 and len(bad) == 1)
    finally:
        flow.stop()
        t.join(10)
    assert bad.rows()[0]["line"] == 2 and bad.rows()[0]["file"] == str(path)
