"""The producer-state snapshot keeps the idempotent commit of the exactly-once log
sink correct after retention removed what it appended (Kafka's producer-state
``.snapshot`` files): checked against the batch headers of the whole history,
kept by the tests before retention deletes them."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import time
from pathlib import Path

import polars as pl
import pytest

from sluice.connectors.sinks.log import LogSink
from sluice.errors import ConfigError, JobError
from sluice.log import Log
from sluice.log.partition import Partition, iter_headers
from sluice.log.producer_state import (
    RECENT_SEQUENCES,
    SNAPSHOT_NAME,
    ProducerEntry,
    ProducerState,
    ProducerStateUnknownError,
    read_snapshot,
    write_snapshot,
)
from sluice.log.retention import maintain_partition
from sluice.log.segment import list_segments

from .procs import python
from .test_log_sink_exactly_once import _die, _rows, _writer

DAY = 86_400_000


def _headers(part: Partition) -> list[tuple[int, int, int, int]]:
    """(producer id, sequence, base offset, records) of every local batch."""
    st = part.state()
    out = []
    for base in list_segments(part.dir):
        fd = os.open(part.segment_file(base), os.O_RDONLY)
        end = st.active_end if base == st.active_base else os.fstat(fd).st_size
        out += [
            (h.producer_id, h.base_sequence, h.base_offset, h.last_offset_delta + 1)
            for h in iter_headers(fd, 0, end)
        ]
        os.close(fd)
    return out


def _fill(log: Log, partition: int, n: int) -> None:
    """Append ``n`` records of another producer (~100 B each) to ``partition``."""
    with log.producer() as prod:
        for a in range(0, n, 50):
            prod.send_batch(
                "out",
                pl.DataFrame({"v": [f"filler-{i:06d}-" + "x" * 80 for i in range(a, a + 50)]}),
                value="v",
                partition=partition,
            )


def _small_topic(d: Path, partitions: int = 1, **settings: object) -> Log:
    log = Log(d)
    log.create_topic(
        "out", partitions=partitions, segment_bytes="4KiB", retention_bytes="8KiB", **settings
    )
    return log


# -- the gap: retention between a commit and its repetition -------------------------------------


def test_a_commit_repeated_after_retention_deleted_its_records_appends_nothing(
    tmp_path: Path,
) -> None:
    d = tmp_path / "data"
    log = _small_topic(d)
    sink = LogSink("out", d, key="user")
    w = _writer(sink)
    w.write(_rows(0, 40))
    txn = w.pre_commit(1)
    (entry,) = txn["staged"]
    staged = Path(sink.staging_dir()) / entry["file"]
    kept = tmp_path / "kept.arrow"
    shutil.copy(staged, kept)
    w.commit(1, txn)
    # the process "dies" after appending, before the staging file was deleted
    # and the commit acknowledged: the staging file is still there
    shutil.copy(kept, staged)
    _die(w)
    part = log.partition("out", 0)
    history = _headers(part)
    assert {(p, s) for p, s, _, _ in history} == {(w.producer_id, 1)}
    assert sum(n for *_, n in history) == 40
    # meanwhile others write; the segment rolls and retention deletes the commit's records
    _fill(log, 0, 600)
    log.maintain("out")
    start, end = log.offsets("out", 0)
    assert start > 40, "retention removed every record of the commit"
    assert all(p != w.producer_id for p, *_ in _headers(part))
    # the job restarts from the checkpoint: its commit is repeated
    LogSink("out", d, key="user").recover([txn])
    assert log.offsets("out", 0) == (start, end), "nothing appended twice"
    assert not staged.exists()
    assert part.producer_records(w.producer_id, 1, since=0) == 40
    # the next checkpoint of the job appends its rows normally
    again = LogSink("out", d, key="user")
    again.recover([txn])
    w2 = _writer(again)
    assert w2.producer_id == w.producer_id
    w2.write(_rows(40, 55))
    w2.commit(2, w2.pre_commit(2))
    assert log.offsets("out", 0)[1] == end + 15
    assert part.producer_records(w.producer_id, 2, since=end) == 15
    w2.close()


def test_a_lost_snapshot_after_retention_refuses_instead_of_duplicating(tmp_path: Path) -> None:
    d = tmp_path / "data"
    log = _small_topic(d)
    sink = LogSink("out", d, key="user")
    w = _writer(sink)
    w.write(_rows(0, 30))
    txn = w.pre_commit(1)
    staged = Path(sink.staging_dir()) / txn["staged"][0]["file"]
    kept = tmp_path / "kept.arrow"
    shutil.copy(staged, kept)
    w.commit(1, txn)
    shutil.copy(kept, staged)
    _die(w)
    _fill(log, 0, 600)
    log.maintain("out")
    end = log.offsets("out", 0)[1]
    os.remove(Path(log.partition_dir("out", 0)) / SNAPSHOT_NAME)
    with pytest.raises(JobError, match=r"cannot tell how many records of producer .* sequence 1"):
        LogSink("out", d, key="user").recover([txn])
    assert log.offsets("out", 0)[1] == end
    # the rebuilt snapshot knows the local batches exactly, the deleted ones as unknown
    state = read_snapshot(log.partition("out", 0))
    assert state is not None and state.unknown == log.offsets("out", 0)[0]


def test_sigkill_in_a_commit_then_retention_then_recovery_is_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "data"
    log = _small_topic(d, partitions=3)
    code = """
    import json, sys
    from sluice.connectors.sinks.log import LogSink
    from tests.log.test_log_sink_exactly_once import _rows, _writer
    sink = LogSink("out", sys.argv[1], key="user")
    w = _writer(sink)
    w.write(_rows(0, 90))
    txn = w.pre_commit(1)
    print(json.dumps(txn), flush=True)
    w.commit(1, txn)  # SLUICE_FAULT kills it before the second partition's append
    """
    monkeypatch.setenv("SLUICE_FAULT", "log_commit:2")
    proc = python(code, str(d), stdout=-1, stderr=-1)
    monkeypatch.delenv("SLUICE_FAULT")  # only the child is to be killed
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    txn = json.loads(out.splitlines()[0])
    counts = {int(p): c for p, (_, c) in txn["staged"][0]["partitions"].items()}
    assert len(counts) == 3 and sum(counts.values()) == 90
    first = min(counts)
    pid = txn["producer_id"]
    ends = {p: log.offsets("out", p)[1] for p in range(3)}
    assert ends == {p: counts[first] if p == first else 0 for p in range(3)}
    # retention removes the appended part before the job is restored
    _fill(log, first, 600)
    log.maintain("out")
    assert log.offsets("out", first)[0] > counts[first]
    filled = log.offsets("out", first)[1]
    LogSink("out", d, key="user").recover([txn])
    assert log.offsets("out", first)[1] == filled
    for p in range(3):
        part = log.partition("out", p)
        assert part.producer_records(pid, 1) == counts[p]
        if p != first:  # appended by the recovery: every staged row there once
            hist = _headers(part)
            assert sum(n for q, s, _, n in hist if (q, s) == (pid, 1)) == counts[p]
            assert log.offsets("out", p)[1] == counts[p]


# -- the snapshot file ---------------------------------------------------------------------------


def _state_after_writes(tmp_path: Path) -> tuple[Log, Partition, list[tuple[int, int, int, int]]]:
    d = tmp_path / "data"
    log = Log(d)
    log.create_topic("out", segment_bytes="4KiB")  # no retention: everything stays local
    for i in range(4):
        sink = LogSink("out", d, key="user")
        w = _writer(sink)
        w.write(_rows(i * 20, i * 20 + 20))
        w.commit(1, w.pre_commit(1))
        w.close()
    _fill(log, 0, 200)
    part = log.partition("out", 0)
    part.roll()
    log.maintain("out")
    return log, part, _headers(part)


def _brute(history: list[tuple[int, int, int, int]], pid: int, seq: int, since: int) -> int:
    return sum(n for p, s, b, n in history if (p, s) == (pid, seq) and b >= since)


def test_the_snapshot_holds_every_producer_of_the_closed_segments(tmp_path: Path) -> None:
    _, part, history = _state_after_writes(tmp_path)
    state = read_snapshot(part)
    assert state is not None and state.covered == part.state().active_base > 0
    assert state.unknown == 0
    assert set(state.producers) == {p for p, *_ in history}
    for pid, seq, base, _ in history:
        for since in (0, base, base + 1):
            assert state.count(pid, seq, since) == _brute(history, pid, seq, since)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_corrupt_snapshot_is_rebuilt_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    log, part, history = _state_after_writes(tmp_path)
    path = Path(part.dir) / SNAPSHOT_NAME
    good = read_snapshot(part)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) - 5]
    else:
        data = bytearray(b"not a snapshot at all")
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="sluice.log"):
        log.maintain("out")
    assert any("rebuilding the producer state" in r.message for r in caplog.records)
    rebuilt = read_snapshot(part)
    assert rebuilt is not None and good is not None
    assert rebuilt.covered == good.covered and rebuilt.unknown == 0  # nothing was deleted
    assert {p: e.groups for p, e in rebuilt.producers.items()} == {
        p: e.groups for p, e in good.producers.items()
    }
    # and an idempotent append reading a corrupt snapshot rebuilds it too
    path.write_bytes(b"SLPS" + b"\0" * 60)
    pid, seq = history[0][:2]
    assert part.producer_records(pid, seq) == _brute(history, pid, seq, 0)


def test_a_snapshot_past_the_end_of_a_truncated_log_is_cut_back(tmp_path: Path) -> None:
    log, part, _ = _state_after_writes(tmp_path)
    state = read_snapshot(part)
    assert state is not None
    state.covered += 1000  # as if recovery had cut off segments the snapshot covered
    state.producers[12345] = ProducerEntry(0, 0, [(7, [(state.covered - 1, 1)])])
    write_snapshot(part, state)
    log.maintain("out")
    cut = read_snapshot(part)
    assert cut is not None and cut.covered == part.state().active_base
    assert 12345 not in cut.producers


def test_snapshot_writes_are_atomic_under_sigkill(tmp_path: Path) -> None:
    d = tmp_path / "data"
    Log(d).create_topic("out")
    code = """
    import sys
    from sluice.log import Log
    from sluice.log.producer_state import ProducerState, write_snapshot
    part = Log(sys.argv[1]).partition("out", 0)
    i = 0
    while True:
        s = ProducerState(covered=i)
        for pid in range(i % 5000):
            s.apply(pid, i, pid, 1, 0)
        write_snapshot(part, s)
        i += 1
        if i == 3:
            print("go", flush=True)
    """
    for _ in range(2):
        proc = python(code, str(d), stdout=-1)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
        time.sleep(random.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        state = read_snapshot(Log(d).partition("out", 0))  # never half written
        assert state is not None and len(state.producers) == state.covered % 5000
    log = Log(d)
    log.maintain("out")  # the cleaner removes what a killed writer left
    assert os.listdir(log.partition_dir("out", 0)).count(SNAPSHOT_NAME) == 1
    assert not [n for n in os.listdir(log.partition_dir("out", 0)) if ".tmp." in n]


# -- bounds: expiry and recent sequences ---------------------------------------------------------


def test_producer_ids_not_seen_for_producer_expiration_are_dropped(tmp_path: Path) -> None:
    d = tmp_path / "data"
    log = Log(d)
    log.create_topic("out", segment_bytes="4KiB", producer_expiration="2d")
    part = log.partition("out", 0)
    t0 = int(time.time() * 1000)
    old: set[int] = set()
    for i in range(30):  # 30 short-lived producers: 30 producer ids
        with log.producer() as prod:
            prod.send("out", f"old-{i}", partition=0)
            old.add(prod.producer_id)
    part.roll()
    maintain_partition(log, part, now=t0)
    state = read_snapshot(part)
    assert state is not None and set(state.producers) == old
    new: set[int] = set()
    for i in range(10):
        with log.producer() as prod:
            prod.send("out", f"new-{i}", partition=0)
            new.add(prod.producer_id)
    part.roll()
    maintain_partition(log, part, now=t0 + DAY)
    maintain_partition(log, part, now=t0 + 2 * DAY + 1)
    state = read_snapshot(part)
    assert state is not None and set(state.producers) == new, "the old ids expired"
    history = _headers(part)
    old_end = max(b + n for p, _, b, n in history if p in old)
    assert state.unknown == old_end
    # an expired id whose records are still local is counted from the segments
    pid, seq = next((p, s) for p, s, _, _ in history if p in old)
    assert part.producer_records(pid, seq) == _brute(history, pid, seq, 0) == 1
    # once retention removed them, the partition refuses to guess
    log.alter_topic("out", retention_bytes="4KiB")
    _fill(log, 0, 400)
    maintain_partition(log, part, now=t0 + 2 * DAY + 2)
    assert log.offsets("out", 0)[0] > old_end
    with pytest.raises(ProducerStateUnknownError, match="expired after producer_expiration"):
        part.producer_records(pid, seq)
    with pytest.raises(ConfigError, match="producer_expiration"):
        log.create_topic("bad", producer_expiration="soon")


def test_a_producer_keeps_its_recent_sequences_only() -> None:
    state = ProducerState()
    for seq in range(1, 11):  # ten checkpoints of one sink, two batches each
        state.apply(7, seq, seq * 10, 3, 0)
        state.apply(7, seq, seq * 10 + 3, 2, 0)
    state.covered = 200
    (entry,) = state.producers.values()
    assert [s for s, _ in entry.groups] == list(range(11 - RECENT_SEQUENCES, 11))
    assert state.count(7, 10, 100) == 5 and state.count(7, 10, 103) == 2
    assert state.count(7, 10, 104) == 0
    assert state.count(7, 3, 0) is None, "a dropped sequence is unknown, never 0"
    assert state.count(7, 3, entry.forgotten) == 0
    assert ProducerState.from_bytes(state.to_bytes()) == state


def test_counts_are_exact_or_unknown_against_a_brute_force_history() -> None:
    rng = random.Random(5)
    for _ in range(30):
        state = ProducerState()
        history: list[tuple[int, int, int, int]] = []
        offset, now = 0, 0
        for _ in range(rng.randint(1, 200)):
            pid = rng.randint(0, 6)
            seq = rng.choice(
                [rng.randint(0, 8), max([s for p, s, *_ in history if p == pid] or [0])]
            )
            n = rng.randint(1, 4)
            state.apply(pid, seq, offset, n, now)
            history.append((pid, seq, offset, n))
            offset += n
            now += rng.randint(0, 10)
            if rng.random() < 0.05:
                state.expire(now, 30)
        state.covered = offset
        state = ProducerState.from_bytes(state.to_bytes())
        known = 0
        for _ in range(100):
            pid, seq, since = rng.randint(0, 7), rng.randint(0, 8), rng.randint(0, offset)
            got = state.count(pid, seq, since)
            if got is not None:
                known += 1
                assert got == _brute(history, pid, seq, since)
        assert known > 0
