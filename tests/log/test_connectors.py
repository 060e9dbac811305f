"""The log as a Sluice source (one split per partition, replayable) and sink."""

from __future__ import annotations

from pathlib import Path

import polars as pl

import sluice as sl
from sluice.connectors.base import ReaderContext
from sluice.connectors.sinks.log import log as log_sink
from sluice.connectors.sources.log import log as log_source
from sluice.log import Log


def _events(n: int) -> list[dict]:
    return [{"user": f"u{i % 4}", "ts": 1_000 + i, "amount": float(i)} for i in range(n)]


def test_sink_then_source_round_trip(tmp_path: Path) -> None:
    d = str(tmp_path)
    Log(d).create_topic("events", partitions=3)
    flow = sl.Flow("write")
    flow.source(_events(300), time="ts").sink(log_sink("events", d, key="user", timestamp="ts"))
    flow.run()
    flow = sl.Flow("read", parallelism=2)
    out = sl.sinks.collect()
    flow.source(log_source("events", d), time="ts").sink(out)
    flow.run()
    got = out.to_polars().sort("ts")
    assert got.select("user", "ts", "amount").rows() == [tuple(e.values()) for e in _events(300)]


def test_splits_are_partitions_with_positions(tmp_path: Path) -> None:
    d = str(tmp_path)
    log = Log(d)
    log.create_topic("t", partitions=2)
    with log.producer() as p:
        p.send_batch("t", pl.DataFrame({"n": list(range(10))}), partition=0)
    src = log_source("t", d, format="raw")
    splits = src.create_splits(1)
    assert [s.split_id for s in splits] == ["t/0", "t/1"] and src.max_parallelism == 2
    s0 = splits[0]
    s0.open(ReaderContext("log"))
    batch = s0.poll(4)
    assert batch is not None and batch.data["offset"].to_list() == [0, 1, 2, 3]
    assert batch.data.columns == ["partition", "offset", "timestamp", "key", "value"]
    assert s0.position() == 4
    s0.seek(8)  # replay from a recorded position
    assert s0.poll(100).data["offset"].to_list() == [8, 9]
    assert s0.finished
    s0.close()


def test_group_offsets_make_a_second_run_continue(tmp_path: Path) -> None:
    d = str(tmp_path)
    Log(d).create_topic("t")
    with Log(d).producer() as p:
        p.send_many("t", [{"value": {"i": i}} for i in range(5)])

    def run() -> list[int]:
        flow, out = sl.Flow("g"), sl.sinks.collect()
        flow.source(log_source("t", d, group="job")).sink(out)
        flow.run()
        return out.to_polars()["i"].to_list() if len(out) else []

    assert run() == [0, 1, 2, 3, 4]
    with Log(d).producer() as p:
        p.send("t", {"i": 5})
    assert run() == [5]


def test_bad_json_values_are_bad_records(tmp_path: Path) -> None:
    d = str(tmp_path)
    Log(d).create_topic("t")
    with Log(d).producer() as p:
        p.send_many("t", [{"value": '{"i": 1}'}, {"value": "oops"}, {"value": '{"i": 3}'}])
    flow, out = sl.Flow("bad"), sl.sinks.collect()
    stream = flow.source(log_source("t", d), on_error="dead_letter")
    stream.sink(out)
    dead = sl.sinks.collect()
    stream.dead_letters().sink(dead)
    flow.run()
    assert out.to_polars()["i"].to_list() == [1, 3]
    (bad,) = dead.rows()
    assert bad["file"] == "t/0" and bad["line"] == 1 and bad["raw"] == "oops"
