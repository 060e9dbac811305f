"""Bad input: clear errors naming source and row, or dead letters on request."""

from __future__ import annotations

import pytest

import sluice as sl
from tests.helpers import run_collect


def test_unparsable_timestamp_names_source_and_row():
    rows = [{"ts": "2024-01-01T00:00:00", "v": 1}, {"ts": "yesterday", "v": 2}]
    with pytest.raises(sl.BadRecordError) as e:
        run_collect(lambda f: f.source(rows, time="ts", name="events"))
    msg = str(e.value)
    assert "events" in msg and "row 1" in msg and "yesterday" in msg


def test_missing_timestamp_is_an_error():
    rows = [{"ts": 1, "v": 1}, {"ts": None, "v": 2}]
    with pytest.raises(sl.BadRecordError, match="missing"):
        run_collect(lambda f: f.source(rows, time="ts"))


def test_dead_letters_on_request_and_good_rows_pass():
    rows = [{"ts": 1, "v": 1}, {"ts": None, "v": 2}, {"ts": 3, "v": 3}]
    flow = sl.Flow("dl")
    good, bad = sl.sinks.collect(), sl.sinks.collect()
    s = flow.source(rows, time="ts", on_error="dead_letter", name="events")
    s.sink(good)
    s.dead_letters().sink(bad)
    res = flow.run()
    assert good.to_polars()["v"].to_list() == [1, 3]
    dl = bad.to_polars()
    assert dl.height == 1 and dl["line"][0] == 1 and "missing" in dl["reason"][0]
    assert dl["source"][0] == "events"
    assert res.metric("events", "dead_letters") == 1


def test_schema_mismatch_names_field_and_row():
    rows = [{"ts": 1, "v": "1"}, {"ts": 2, "v": "two"}]
    with pytest.raises(sl.BadRecordError, match=r"'v'.*two|two.*'v'"):
        run_collect(lambda f: f.source(rows, time="ts", schema={"ts": int, "v": int}))


def test_late_rows_are_counted_even_without_late_sink():
    rows = [{"k": 1, "ts": 5000}, {"k": 1, "ts": 100}]
    flow = sl.Flow("late")
    out = sl.sinks.collect()
    flow.source(sl.sources.memory(rows, batch_size=1), time="ts").key_by("k").window(
        sl.windows.tumbling("1s")
    ).agg(n=sl.agg.count()).sink(out)
    res = flow.run()
    assert res.metrics["window"].late_dropped == 1
    assert out.to_polars()["n"].to_list() == [1]
