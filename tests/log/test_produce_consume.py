"""Producers and consumers: keys, partitions, bad input, offsets, timestamps, groups."""

from __future__ import annotations

import datetime as dt
import os

import polars as pl
import pytest

from sluice.log import (
    InvalidRecordError,
    Log,
    PartitionNotFoundError,
    RecordTooLargeError,
    SchemaMismatchError,
    TopicExistsError,
    TopicNotFoundError,
    partition_for,
)
from sluice.log.groups import OffsetStore

from .helpers import read_all


def test_same_key_same_partition_in_order(log: Log) -> None:
    log.create_topic("t", partitions=4)
    users = ["ana", "bo", "cy", "dee", "eve"]
    df = pl.DataFrame({"user": users * 40, "i": list(range(200))})
    with log.producer() as p:
        meta = p.send_batch("t", df, key="user")
    assert meta.count == 200
    expected = dict(zip(users, partition_for([u.encode() for u in users], 4).tolist(), strict=True))
    for part in range(4):
        rows = read_all(log, "t", part)
        keys = {k.decode() for k in rows["key"].to_list()}
        assert all(expected[k] == part for k in keys)
        got = pl.Series([r for r in rows["value"].to_list()]).cast(pl.String).str.json_decode()
        seq = [v["i"] for v in got.to_list()]
        assert seq == sorted(seq)  # order kept per partition
    total = sum(read_all(log, "t", p).height for p in range(4))
    assert total == 200


def test_send_returns_metadata_and_encodes_values(log: Log) -> None:
    log.create_topic("t", partitions=2)
    with log.producer(fsync="always") as p:
        m1 = p.send("t", {"a": 1}, key="k", timestamp=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
        m2 = p.send("t", "text", key="k", headers={"trace": "x"})
        m3 = p.send("t", None, key="k", partition=1)
    assert (m1.partition, m1.offset, m1.timestamp) == (m2.partition, 0, 1704067200000)
    assert (m2.offset == 1 and (m3.partition, m3.offset) == (1, 0)) or m3.offset == 2
    with log.consumer("t", from_="earliest") as c:
        recs = sorted(c.poll(timeout=1.0), key=lambda r: (r.partition, r.offset))
    by_value = {r.value: r for r in recs}
    assert by_value[b'{"a":1}'].json() == {"a": 1}
    assert by_value[b"text"].headers == [("trace", b"x")]
    assert by_value[None].value is None  # a tombstone


def test_bad_input_is_rejected_and_nothing_is_written(log: Log) -> None:
    with pytest.raises(TopicNotFoundError, match="sluice topic create nope"), log.producer() as p:
        p.send("nope", b"x")
    log.create_topic("t", partitions=2, max_record_bytes=100, schema={"id": "int", "name": "str?"})
    with pytest.raises(TopicExistsError):
        log.create_topic("t")
    good = pl.DataFrame({"id": [1, 2, 3]})
    with log.producer() as p:
        with pytest.raises(PartitionNotFoundError, match="partitions 0 to 1"):
            p.send_batch("t", good, partition=2)
        with pytest.raises(RecordTooLargeError, match="record 1"):
            p.send_batch("t", pl.DataFrame({"id": [1, 2], "name": ["a", "b" * 200]}))
        with pytest.raises(SchemaMismatchError, match=r"record 1 .* field 'id' must be int"):
            p.send_many("t", [{"value": '{"id": 1}'}, {"value": '{"id": "x"}'}])
        with pytest.raises(SchemaMismatchError, match="required field 'id'"):
            p.send_batch("t", pl.DataFrame({"name": ["a"]}))
        with pytest.raises(SchemaMismatchError, match="not JSON"):
            p.send("t", b"{oops")
    assert [log.offsets("t", i) for i in range(2)] == [(0, 0), (0, 0)]
    log.create_topic("c", compact=True)
    with log.producer() as p, pytest.raises(InvalidRecordError, match="no key"):
        p.send_many("c", [{"key": "a", "value": "1"}, {"value": "2"}])
    assert log.offsets("c", 0) == (0, 0)


def test_consume_from_earliest_latest_offset_and_timestamp(log: Log) -> None:
    log.create_topic("t", retention=None)
    with log.producer() as p:
        p.send_batch(
            "t",
            pl.DataFrame({"v": ["a", "b", "c", "d"], "ts": [10, 20, 30, 40]}),
            value="v",
            timestamp="ts",
        )

    def first(start: object) -> list[bytes]:
        with log.consumer("t", from_=start) as c:
            return c.poll_batch(timeout=0.05)["value"].to_list()

    assert first("earliest") == [b"a", b"b", b"c", b"d"]
    assert first("latest") == []
    assert first(2) == [b"c", b"d"]
    assert first(dt.datetime.fromtimestamp(0.025, dt.UTC)) == [b"c", b"d"]
    assert first("1970-01-01T00:00:00.030Z") == [b"c", b"d"]


def test_group_offsets_are_committed_and_resumed(log: Log) -> None:
    log.create_topic("t", partitions=2)
    with log.producer() as p:
        p.send_many("t", [{"key": str(i), "value": str(i)} for i in range(10)])
    with log.consumer("t", group="g", from_="earliest") as c:
        assert c.poll_batch(timeout=1.0, max_records=100).height == 10
    store = OffsetStore(log.data_dir, "g")
    assert sum(store.all("t").values()) == 10
    with log.producer() as p:
        p.send("t", b"new", key="1")
    with log.consumer("t", group="g", from_="earliest") as c:
        assert c.poll_batch(timeout=1.0)["value"].to_list() == [b"new"]
    stats = log.stats("t")
    assert sum(r["records"] for r in stats) == 11
    assert all(r["groups"]["g"]["lag"] == 0 for r in stats)


def test_consumers_of_a_group_split_partitions_and_rebalance(log: Log) -> None:
    log.create_topic("t", partitions=5)
    a = log.consumer("t", group="g", rebalance_interval=0)
    assert len(a.assignment()) == 5
    b = log.consumer("t", group="g", rebalance_interval=0)
    a.poll_batch()  # a sees b and gives up partitions
    b.poll_batch()  # b takes them
    assa, assb = set(a.assignment()), set(b.assignment())
    assert not assa & assb and len(assa | assb) == 5 and assa and assb
    b.close()
    a.poll_batch()
    assert len(a.assignment()) == 5
    a.close()


def test_a_dead_member_is_noticed_through_its_lock(log: Log) -> None:
    import subprocess
    import sys
    import textwrap

    log.create_topic("t", partitions=4)
    code = textwrap.dedent(
        f"""
        import os, sys
        from sluice.log import Log
        c = Log({log.data_dir!r}).consumer("t", group="g")
        print(len(c.assignment()), flush=True)
        sys.stdin.readline()
        os._exit(0)  # dies without leaving the group
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "4"
    c = log.consumer("t", group="g", rebalance_interval=0)
    assert len(c.assignment()) == 0  # all 4 are still held... or being handed over
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(10)
    c.poll_batch()
    assert len(c.assignment()) == 4
    c.close()
