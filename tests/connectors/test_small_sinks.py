"""Callback and stdout sinks."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

import sluice as sl

ROWS = [{"user": "a", "n": 1}, {"user": "b", "n": 2}, {"user": "c", "n": 3}]


def run(
    sink: sl.sinks.CallbackSink | sl.sinks.StdoutSink, *, batch: int = 2, parallelism: int = 1
) -> None:
    flow = sl.Flow("s", parallelism=parallelism)
    flow.source(sl.sources.memory(ROWS, batch_size=batch)).sink(sink)
    flow.run()


def test_callback_gets_each_batch() -> None:
    batches: list[pl.DataFrame] = []
    run(sl.sinks.callback(batches.append))
    assert [b.height for b in batches] == [2, 1]
    assert pl.concat(batches).rows(named=True) == ROWS


def test_callback_per_row_gets_dicts() -> None:
    rows: list[dict[str, Any]] = []
    run(sl.sinks.callback(rows.append, per_row=True))
    assert rows == ROWS


def test_callback_errors_name_the_sink() -> None:
    def boom(df: pl.DataFrame) -> None:
        raise RuntimeError("no space left")

    with pytest.raises(sl.JobError, match=r"'callback'.*no space left"):
        run(sl.sinks.callback(boom))
    with pytest.raises(sl.ConfigError, match="must be callable"):
        sl.sinks.callback(42)  # type: ignore[arg-type]


def test_stdout_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    run(sl.sinks.stdout(pretty=False), parallelism=2)
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == [
        '{"user":"a","n":1}',
        '{"user":"b","n":2}',
        '{"user":"c","n":3}',
    ]


def test_stdout_pretty_table_is_cut_at_max_rows(capsys: pytest.CaptureFixture[str]) -> None:
    sink = sl.sinks.stdout(max_rows=2)
    assert sink.max_parallelism == 1
    run(sink, batch=3)
    out = capsys.readouterr().out
    with pl.Config(tbl_rows=2, tbl_cols=-1, fmt_str_lengths=80):
        table = str(pl.DataFrame(ROWS[:2]))
    assert out == table + "\n… 1 more row\n"
