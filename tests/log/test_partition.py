"""A partition: appends, ordering, segment rolls, index and time lookups, recovery."""

from __future__ import annotations

import errno
import os

import polars as pl
import pytest

from sluice.log import CorruptRecordError, Log, LogFullError
from sluice.log.index import load_offset_index, load_time_index
from sluice.log.reader import PartitionReader, offset_for_time
from sluice.log.segment import list_segments

from .helpers import read_all, values


def _fill(log: Log, topic: str, n: int, *, per_call: int = 1, start_ts: int = 1_000) -> None:
    with log.producer(fsync="never") as p:
        for i in range(0, n, per_call):
            m = min(per_call, n - i)
            df = pl.DataFrame(
                {
                    "v": [f"record-{j:06d}" for j in range(i, i + m)],
                    "ts": [start_ts + j for j in range(i, i + m)],
                }
            )
            p.send_batch(topic, df, value="v", timestamp="ts", partition=0)


def test_round_trip_keeps_order_offsets_and_timestamps(log: Log) -> None:
    log.create_topic("t", retention=None)
    _fill(log, "t", 100, per_call=7)
    df = read_all(log, "t")
    assert df["offset"].to_list() == list(range(100))
    assert df["timestamp"].to_list() == [1_000 + i for i in range(100)]
    assert df["value"].to_list() == [f"record-{i:06d}".encode() for i in range(100)]
    assert log.offsets("t", 0) == (0, 100)


def test_segments_roll_by_size_and_reads_cross_them(log: Log) -> None:
    log.create_topic("t", segment_bytes="4KiB", index_interval_bytes=256, retention=None)
    _fill(log, "t", 500)
    part = log.partition("t", 0)
    bases = list_segments(part.dir)
    assert len(bases) > 5
    for b in bases[:-1]:
        assert os.path.getsize(part.segment_file(b)) <= 4096
    assert values(log, "t") == [f"record-{i:06d}".encode() for i in range(500)]
    # reading from any offset starts exactly there (sparse index + scan)
    for start in (0, 1, 37, 250, 499):
        assert read_all(log, "t", offset=start)["offset"].to_list() == list(range(start, 500))
    assert len(load_offset_index(part.segment_file(bases[1], ".index"))) > 1


def test_segments_roll_by_age(log: Log) -> None:
    log.create_topic("t", segment_age="1ms", retention=None)
    _fill(log, "t", 3)
    import time

    time.sleep(0.01)
    _fill(log, "t", 1)
    assert len(list_segments(log.partition("t", 0).dir)) >= 2


def test_lookup_by_timestamp(log: Log) -> None:
    log.create_topic("t", segment_bytes="4KiB", index_interval_bytes=200, retention=None)
    _fill(log, "t", 400, per_call=3, start_ts=10_000)
    part = log.partition("t", 0)
    for target, expected in ((0, 0), (10_000, 0), (10_123, 123), (10_399, 399)):
        assert offset_for_time(part, target) == expected
    assert offset_for_time(part, 99_999) is None
    # closed segments end their time index with the segment's newest timestamp
    base = list_segments(part.dir)[0]
    assert load_time_index(part.segment_file(base, ".timeindex"))["ts"][-1] > 10_000


def test_tailing_reader_sees_new_records(log: Log) -> None:
    log.create_topic("t", retention=None)
    part = log.partition("t", 0)
    r = PartitionReader(part, 0)
    assert r.read() is None
    _fill(log, "t", 2)
    assert r.read().column("offset").to_pylist() == [0, 1]
    assert r.read() is None
    _fill(log, "t", 1)
    assert r.read().column("offset").to_pylist() == [2]


def test_max_records_cuts_inside_a_batch(log: Log) -> None:
    log.create_topic("t", retention=None)
    _fill(log, "t", 10, per_call=10)
    r = PartitionReader(log.partition("t", 0), 0)
    assert r.read(max_records=4).column("offset").to_pylist() == [0, 1, 2, 3]
    assert r.read(max_records=4).column("offset").to_pylist() == [4, 5, 6, 7]
    assert r.read().column("offset").to_pylist() == [8, 9]


def _other_log(log: Log) -> Log:
    """A second handle on the same directory (as another process would have)."""
    return Log(log.data_dir)


def test_a_torn_tail_left_by_a_dead_writer_is_cut(log: Log) -> None:
    log.create_topic("t", retention=None)
    _fill(log, "t", 5)
    part = log.partition("t", 0)
    seg = part.segment_file(part.state().active_base)
    with open(seg, "ab") as f:  # half a batch, as a killed writer leaves it
        f.write(b"SLGB" + b"\x01" * 40)
    assert values(log, "t")[-1] == b"record-000004"  # readers stop at the high watermark
    other = _other_log(log)
    _fill(other, "t", 1, start_ts=5_000)  # the next writer cuts the torn bytes first
    assert [r.decode() for r in values(other, "t")][-2:] == ["record-000004", "record-000000"]
    other.close()


def test_recovery_truncates_a_torn_batch_and_rebuilds_indexes(log: Log) -> None:
    log.create_topic("t", segment_bytes="4KiB", index_interval_bytes=128, retention=None)
    _fill(log, "t", 200)
    part = log.partition("t", 0)
    bases = list_segments(part.dir)
    active = part.state().active_base
    size = os.path.getsize(part.segment_file(active))
    with open(part.segment_file(active), "r+b") as f:
        f.truncate(size - 5)  # the last batch loses its end
    for b in bases:
        os.unlink(part.segment_file(b, ".index"))
    os.unlink(part.segment_file(bases[0], ".timeindex"))
    log.close()
    os.unlink(os.path.join(part.dir, "head"))  # as after a reboot: the head is not trusted
    fresh = Log(log.data_dir)
    vals = values(fresh, "t")
    assert vals == [f"record-{i:06d}".encode() for i in range(199)]
    for b in bases:
        assert os.path.exists(part.segment_file(b, ".index"))
    assert fresh.offsets("t", 0) == (0, 199)
    _fill(fresh, "t", 1)  # appends continue after the cut
    assert fresh.offsets("t", 0) == (0, 200)
    fresh.close()


def test_recovery_after_reboot_revalidates_from_the_recovery_point(log: Log) -> None:
    log.create_topic("t", segment_bytes="4KiB", retention=None)
    _fill(log, "t", 120)
    part = log.partition("t", 0)
    active = part.state().active_base
    with open(part.segment_file(active), "ab") as f:
        f.write(os.urandom(300))  # garbage that a crash of the machine could leave
    # a head written under another boot id is not trusted
    with open(os.path.join(part.dir, "head"), "r+b") as f:
        f.seek(16 + 7 * 8)
        f.write(b"\xff" * 16)
    fresh = Log(log.data_dir)
    assert len(values(fresh, "t")) == 120
    assert os.path.getsize(part.segment_file(active)) < 4096
    fresh.close()


def test_a_flipped_bit_is_reported_with_segment_and_offset(log: Log) -> None:
    log.create_topic("t", retention=None)
    _fill(log, "t", 20, per_call=5)
    part = log.partition("t", 0)
    seg = part.segment_file(0)
    with open(seg, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x01
        f.seek(0)
        f.write(data)
    with pytest.raises(CorruptRecordError) as e:
        read_all(log, "t")
    assert seg in str(e.value) and "offset" in str(e.value)
    assert e.value.offset in (5, 10)


def test_a_full_disk_writes_nothing(log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    log.create_topic("t", retention=None)
    _fill(log, "t", 3)
    part = log.partition("t", 0)
    size = os.path.getsize(part.segment_file(0))
    real = os.pwritev

    def half_then_enospc(fd: int, bufs, pos: int) -> int:
        if pos == size:
            real(fd, [memoryview(bufs[0])[:10]], pos)  # part of the batch lands on disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bufs, pos)

    monkeypatch.setattr(os, "pwritev", half_then_enospc)
    with pytest.raises(LogFullError, match="nothing was written"):
        _fill(log, "t", 1)
    monkeypatch.setattr(os, "pwritev", real)
    assert os.path.getsize(part.segment_file(0)) == size
    assert log.offsets("t", 0) == (0, 3)
    _fill(log, "t", 1)
    assert len(values(log, "t")) == 4
