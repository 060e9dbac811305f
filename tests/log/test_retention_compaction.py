"""Retention by time and size, compaction (model-based), archiving to Parquet."""

from __future__ import annotations

import os

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.log import Log
from sluice.log.archive import archived_files
from sluice.log.compaction import compact_partition
from sluice.log.consumer import parse_start
from sluice.log.partition import now_ms
from sluice.log.reader import offset_for_time
from sluice.log.retention import maintain_partition
from sluice.log.segment import list_segments

from .helpers import read_all

DAY = 86_400_000


def _send(log: Log, topic: str, rows: list[tuple[str | None, str | None, int]]) -> None:
    with log.producer(fsync="never") as p:
        p.send_many(topic, [{"key": k, "value": v, "timestamp": ts} for k, v, ts in rows])


def test_retention_by_time_deletes_old_segments_only(log: Log) -> None:
    log.create_topic("t", retention="1d", segment_bytes="4KiB")
    now = now_ms()
    for _ in range(6):
        _send(log, "t", [(None, "old" * 30, now - 3 * DAY)] * 10)
    for _ in range(6):
        _send(log, "t", [(None, "new" * 30, now - 1000)] * 10)
    part = log.partition("t", 0)
    maintain_partition(log, part, now=now)  # also runs by itself when a segment rolls
    vals = read_all(log, "t")["value"].to_list()
    assert vals.count(b"new" * 30) == 60  # nothing recent was deleted
    start, end = log.offsets("t", 0)
    assert start > 0 and end == 120
    # a consumer that was behind is moved to the new log start
    with log.consumer("t", from_="earliest") as c:
        assert c.poll_batch(timeout=0.5)["offset"][0] == start


def test_an_expired_active_segment_is_rolled_and_deleted(log: Log) -> None:
    log.create_topic("t", retention="1h")
    _send(log, "t", [(None, "x", now_ms() - 2 * DAY)] * 5)
    maintain_partition(log, log.partition("t", 0))
    assert log.offsets("t", 0) == (5, 5)


def test_retention_by_size(log: Log) -> None:
    log.create_topic("t", retention=None, retention_bytes="16KiB", segment_bytes="4KiB")
    for _ in range(40):
        _send(log, "t", [(None, "v" * 100, 1)] * 10)
    part = log.partition("t", 0)
    maintain_partition(log, part)
    assert 12_000 <= part.size_bytes() <= 16_384 + 4096
    assert log.offsets("t", 0)[1] == 400


def test_compaction_keeps_the_latest_value_per_key_and_offsets(log: Log) -> None:
    log.create_topic("t", compact=True, segment_bytes="4KiB", delete_retention="0ms")
    rows = [(f"k{i % 5}", f"v{i}" + "." * 50, i) for i in range(300)]
    rows.append(("k0", None, 300))  # a tombstone for k0
    for j in range(0, 301, 10):
        _send(log, "t", rows[j : j + 10])
    part = log.partition("t", 0)
    part.roll()
    compact_partition(part, force=True, now=10**12)
    df = read_all(log, "t")
    latest = {k: (off, v) for off, (k, v, _) in enumerate(rows)}
    expected = sorted((off, k, v) for k, (off, v) in latest.items() if v is not None)
    got = [
        (o, k.decode(), v.decode()) for o, k, v in df.select("offset", "key", "value").iter_rows()
    ]
    assert got == expected
    assert log.offsets("t", 0)[1] == 301  # offsets preserved, nothing renumbered


class _Model:
    """A log as a plain list: what the real one must return."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str, str | None]] = []  # offset, key, value
        self.next = 0

    def append(self, rows: list[tuple[str, str | None]]) -> None:
        for k, v in rows:
            self.records.append((self.next, k, v))
            self.next += 1

    def compact(self, boundary: int) -> None:
        """Kafka's compaction of the offsets below ``boundary`` (tombstones expired)."""
        closed = [r for r in self.records if r[0] < boundary]
        last = {k: off for off, k, _ in closed}
        kept = [r for r in closed if last[r[1]] == r[0] and r[2] is not None]
        self.records = kept + [r for r in self.records if r[0] >= boundary]


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"),
            st.lists(
                st.tuples(
                    st.sampled_from("abcdef"),
                    st.one_of(st.none(), st.text("xyz", min_size=1, max_size=60)),
                ),
                min_size=1,
                max_size=40,
            ),
        ),
        st.tuples(st.just("roll"), st.none()),
        st.tuples(st.just("compact"), st.none()),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=ops)
def test_compaction_matches_a_model(tmp_path_factory, ops) -> None:
    log = Log(tmp_path_factory.mktemp("model") / "data")
    log.create_topic("t", compact=True, segment_bytes="4KiB", delete_retention="0ms")
    part = log.partition("t", 0)
    model = _Model()
    for op, arg in ops:
        if op == "append":
            _send(log, "t", [(k, v, 1) for k, v in arg])
            model.append(arg)
        elif op == "roll":
            part.roll()
        else:
            compact_partition(part, force=True, now=10**12)
            model.compact(part.state().active_base)
        df = read_all(log, "t")
        got = [
            (o, k.decode(), None if v is None else v.decode())
            for o, k, v in df.select("offset", "key", "value").iter_rows()
        ]
        assert got == model.records
        assert part.high_watermark() == model.next
    log.close()


def test_archive_to_parquet_stays_readable_by_offset_and_time(log: Log) -> None:
    log.create_topic(
        "t", retention=None, segment_bytes="4KiB", archive=True, local_retention_bytes="8KiB"
    )
    for j in range(0, 500, 20):
        _send(
            log,
            "t",
            [(str(i % 3), f"value-{i:05d}" + "-" * 40, 1_000 + i) for i in range(j, j + 20)],
        )
    part = log.partition("t", 0)
    maintain_partition(log, part)
    files = archived_files(part)
    assert files and list_segments(part.dir)[0] > 0  # old local segments are gone
    df = read_all(log, "t", offset=0)
    assert df["offset"].to_list() == list(range(500))
    assert df["value"][7] == b"value-00007" + b"-" * 40
    assert offset_for_time(part, 1_010) == 10
    with log.consumer("t", from_=parse_start(3)) as c:
        assert c.poll_batch(timeout=0.5)["offset"][0] == 3
    arch = pl.read_parquet(files[0][2])  # plain Parquet for any tool
    assert arch.columns[:4] == ["offset", "timestamp", "key", "value"]
    assert os.path.getsize(files[0][2]) > 0


retention_ops = st.lists(
    st.one_of(
        # append records aged 0..4 days (retention is 2 days)
        st.tuples(st.just("append"), st.lists(st.integers(0, 4), min_size=1, max_size=30)),
        st.tuples(st.just("roll"), st.none()),
        st.tuples(st.just("maintain"), st.none()),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=retention_ops)
def test_time_retention_matches_a_model(tmp_path_factory, ops) -> None:
    """Kafka's rule: the oldest segments whose newest record is older than the
    retention are deleted, as a prefix; offsets are never renumbered."""
    log = Log(tmp_path_factory.mktemp("retmodel") / "data")
    log.create_topic("t", retention="2d", segment_bytes="4KiB")
    part = log.partition("t", 0)
    now = now_ms()
    cutoff = now - 2 * DAY
    records: list[tuple[int, int]] = []  # the model: (offset, timestamp) still in the log
    nxt = 0
    for op, arg in ops:
        if op == "append":
            rows = [
                (None, f"v{nxt + i}" + "." * 40, now - age * DAY - 1) for i, age in enumerate(arg)
            ]
            _send(log, "t", rows)
            records += [(nxt + i, ts) for i, (_, _, ts) in enumerate(rows)]
            nxt += len(rows)
        elif op == "roll":
            part.roll()
        else:
            bases = list_segments(part.dir)
            # segments as the log cut them (the active one goes too when all expired)
            bounds = [*bases[1:], nxt]
            segs = []
            for b, end in zip(bases, bounds, strict=True):
                recs = [r for r in records if b <= r[0] < end]
                if recs:
                    segs.append((end, max(ts for _, ts in recs)))
            gone_below = None
            for end, newest in segs:
                if newest < cutoff:
                    gone_below = end
                else:
                    break
            maintain_partition(log, part, now=now)
            if gone_below is not None:
                records = [r for r in records if r[0] >= gone_below]
        df = read_all(log, "t")
        assert df["offset"].to_list() == [o for o, _ in records]
        assert part.high_watermark() == nxt
    log.close()


def test_background_maintenance_applies_retention_without_new_writes(tmp_path) -> None:
    """Like Kafka's periodic retention check: a topic nobody writes to any more
    still loses its expired segments."""
    import time

    log = Log(tmp_path / "data", maintenance_interval="50ms")
    try:
        log.create_topic("t", retention="1h", segment_bytes="4KiB")
        _send(log, "t", [(None, "old" * 30, now_ms() - 2 * DAY)] * 50)
        assert log.offsets("t", 0)[0] == 0
        deadline = time.monotonic() + 5
        while log.offsets("t", 0)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert log.offsets("t", 0) == (50, 50)
    finally:
        log.close()
