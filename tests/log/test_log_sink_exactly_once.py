"""The log sink in a checkpointing job is exactly-once: a consumer of the topic
never sees a row twice, nor a row of a checkpoint that did not complete,
whatever stops or kills the job (two-phase commit over sluice.log.transactions)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice.connectors.sinks.log import LogSink, LogSinkWriter, _release
from sluice.errors import JobError
from sluice.log import Log
from sluice.log.partition import Partition, iter_headers
from sluice.log.segment import list_segments
from tests.helpers import StopAfter, same_rows

from .helpers import read_all

# -- helpers --------------------------------------------------------------------------------


def _rows(a: int, b: int) -> pl.DataFrame:
    return pl.DataFrame({"user": [f"u{i % 7}" for i in range(a, b)], "i": list(range(a, b))})


def _writer(sink: LogSink, subtask: int = 0) -> LogSinkWriter:
    w = sink.create_writer(subtask, 1)
    assert isinstance(w, LogSinkWriter)
    w.transactional = True
    w.open()
    return w


def _die(w: LogSinkWriter) -> None:
    """The writer's process is killed: no close, but its lock goes."""
    if w.sink._lock_path is not None:
        _release(w.sink._lock_path)
        w.sink._lock_path = None


def _topic(data_dir: Path | str, topic: str = "out") -> pl.DataFrame:
    """Every record of the topic: partition, key, the value's fields."""
    log = Log(data_dir)
    frames = []
    for p in range(log.config(topic).partitions):
        df = read_all(log, topic, p)
        if df.height:
            frames.append(df.select(pl.lit(p).alias("partition"), "offset", "key", "value"))
    log.close()
    if not frames:
        return pl.DataFrame(
            schema={"partition": pl.Int32, "offset": pl.Int64, "key": pl.Binary, "value": pl.Binary}
        )
    return pl.concat(frames)


def _ids(data_dir: Path | str, topic: str = "out") -> list[int]:
    return sorted(json.loads(v)["i"] for v in _topic(data_dir, topic)["value"].to_list())


def _staged(sink: LogSink) -> list[str]:
    root = Path(sink.staging_root())
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".lock"
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    Log(d).create_topic("out", partitions=3)
    return d


# -- the transactional writer ------------------------------------------------------------------


def test_nothing_is_visible_before_the_commit_and_a_commit_publishes_once(data: Path) -> None:
    sink = sl.sinks.log("out", data, key="user", staging_buffer=1000)  # spills at once
    w = _writer(sink)
    w.write(_rows(0, 100))
    w.write(_rows(100, 250))
    assert _staged(sink) == [f"{sink.txn_id}/{w.producer_id:016x}.inprogress"]
    txn = w.pre_commit(1)
    assert _topic(data).height == 0, "nothing is visible before the commit"
    (entry,) = txn["staged"]
    assert txn["producer_id"] == w.producer_id and entry["sequence"] == 1
    assert sum(c for _, c in entry["partitions"].values()) == 250
    assert _staged(sink) == [f"{sink.txn_id}/{entry['file']}"]
    w.commit(1, txn)
    assert _ids(data) == list(range(250))
    assert _staged(sink) == []
    # within a partition, rows keep their order; keys route as with send_batch
    got = _topic(data)
    for _, part in got.group_by("partition"):
        ids = [json.loads(v)["i"] for v in part.sort("offset")["value"].to_list()]
        assert ids == sorted(ids)
    with Log(data).producer() as prod:
        want = prod.encode("out", _rows(0, 250), key="user")
    assert want is not None
    route = dict(
        zip(want.column("key").to_pylist(), want.column("partition").to_pylist(), strict=True)
    )
    assert all(route[k] == p for p, k in got.select("partition", "key").rows())
    # committing again, or recovering the same transaction, changes nothing
    w.commit(1, txn)
    w.close()
    LogSink("out", data, key="user").recover([txn])
    assert _ids(data) == list(range(250))
    # the batches carry the producer id and the checkpoint id as sequence
    log = Log(data)
    headers = []
    for p in range(3):
        part = log.partition("out", p)
        st = part.state()
        for base in list_segments(part.dir):
            fd = os.open(part.segment_file(base), os.O_RDONLY)
            end = st.active_end if base == st.active_base else os.fstat(fd).st_size
            headers += list(iter_headers(fd, 0, end))
            os.close(fd)
    assert {(h.producer_id, h.base_sequence) for h in headers} == {(w.producer_id, 1)}


def test_checkpoints_commit_only_their_rows_and_empty_checkpoints_are_fine(data: Path) -> None:
    sink = sl.sinks.log("out", data, key="user")
    w = _writer(sink)
    assert w.pre_commit(1)["staged"] == []
    w.commit(1, w.pre_commit(1))
    w.write(_rows(0, 10))
    t2 = w.pre_commit(2)
    w.write(_rows(10, 30))  # after the barrier: not in checkpoint 2
    w.commit(2, t2)
    assert _ids(data) == list(range(10))
    t3 = w.pre_commit(3)
    assert [e["sequence"] for e in t3["staged"]] == [3]
    w.commit(3, t3)
    assert _ids(data) == list(range(30))
    w.close()


def test_a_transaction_not_committed_is_carried_into_the_next_one(data: Path) -> None:
    sink = sl.sinks.log("out", data, key="user")
    w = _writer(sink)
    w.write(_rows(0, 10))
    w.pre_commit(1)  # its commit never comes (the runtime drops superseded txns)
    w.write(_rows(10, 20))
    t2 = w.pre_commit(2)
    assert [e["sequence"] for e in t2["staged"]] == [1, 2]
    w.commit(2, t2)
    assert _ids(data) == list(range(20))
    w.close()


class _Crash(Exception):
    pass


def test_a_commit_cut_between_two_partitions_is_completed_by_recover(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = sl.sinks.log("out", data, key="user")
    w = _writer(sink)
    w.write(_rows(0, 300))
    txn = w.pre_commit(4)
    calls = []
    orig = Partition.append_once

    def crashing(self: Partition, *a: Any, **kw: Any) -> tuple[int, int]:
        calls.append(self.index)
        if len(calls) == 2:
            raise _Crash  # "killed" after the first partition's append
        return orig(self, *a, **kw)

    monkeypatch.setattr(Partition, "append_once", crashing)
    with pytest.raises(_Crash):
        w.commit(4, txn)
    monkeypatch.setattr(Partition, "append_once", orig)
    _die(w)
    half = _topic(data)
    assert 0 < half.height < 300 and half["partition"].unique().to_list() == [0]
    # a new process restores the checkpoint: the sink completes the commit
    again = LogSink("out", data, key="user")
    again.recover([txn])
    assert _ids(data) == list(range(300))
    assert _staged(again) == []
    assert again.producer_id(0) == w.producer_id, "the producer id survives the restart"


def test_a_commit_cut_inside_a_partition_at_a_segment_roll_is_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "data"
    Log(d).create_topic("out", partitions=1, segment_bytes="4KiB")
    sink = sl.sinks.log("out", d, key="user")
    w = _writer(sink)
    w.write(_rows(0, 2000))  # ~50 KB: many segments
    txn = w.pre_commit(1)
    monkeypatch.setattr("sluice.log.transactions.COMMIT_BATCH_BYTES", 1500)
    writes = []
    orig = Partition._write

    def crashing(self: Partition, *a: Any, **kw: Any) -> Any:
        writes.append(1)
        if len(writes) == 3:
            raise _Crash  # two segments' worth of batches published, then "killed"
        return orig(self, *a, **kw)

    monkeypatch.setattr(Partition, "_write", crashing)
    with pytest.raises(_Crash):
        sink.commit_txn(txn)
    monkeypatch.setattr(Partition, "_write", orig)
    _die(w)
    assert 0 < _topic(d).height < 2000
    LogSink("out", d, key="user").recover([txn])
    got = _topic(d).sort("offset")
    assert [json.loads(v)["i"] for v in got["value"].to_list()] == list(range(2000))


def test_recover_discards_what_was_not_in_the_checkpoint(data: Path) -> None:
    sink = sl.sinks.log("out", data, key="user", staging_buffer=1)
    w = _writer(sink)
    w.write(_rows(0, 50))
    t1 = w.pre_commit(1)
    w.commit(1, t1)
    w.write(_rows(50, 80))
    t2 = w.pre_commit(2)  # the job dies before checkpoint 2 completes
    w.write(_rows(80, 90))  # staged after the barrier: in progress
    assert len(_staged(sink)) == 2
    _die(w)
    again = LogSink("out", data, key="user")
    again.recover([t1])  # checkpoint 1 is the last complete one
    assert _ids(data) == list(range(50))
    assert _staged(again) == []
    w2 = _writer(again)
    assert w2.producer_id == sink.producer_id(0) and t2["producer_id"] == w2.producer_id
    w2.write(_rows(50, 90))  # the replay
    w2.commit(2, w2.pre_commit(2))  # the same checkpoint id as the lost attempt
    assert _ids(data) == list(range(90))
    w2.close()


def test_a_lost_staging_file_fails_the_recovery_loudly(data: Path) -> None:
    sink = sl.sinks.log("out", data, key="user")
    w = _writer(sink)
    w.write(_rows(0, 20))
    txn = w.pre_commit(1)
    for name in _staged(sink):
        os.remove(Path(sink.staging_root()) / name)
    _die(w)
    with pytest.raises(JobError, match=r"staging file .* is missing"):
        LogSink("out", data, key="user").recover([txn])


HOLDER = """
import json, sys
import polars as pl
import sluice as sl

sink = sl.sinks.log("out", sys.argv[1], key="user")
w = sink.create_writer(0, 1)
w.transactional = True
w.open()
w.write(pl.DataFrame({"user": ["a"], "i": [0]}))
print(json.dumps(w.pre_commit(1)), flush=True)
sys.stdin.read()  # runs until the test closes stdin
"""


def test_a_second_instance_of_a_job_in_another_process_is_refused(data: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    txn = json.loads(proc.stdout.readline())
    with pytest.raises(JobError, match="in use by another running instance"):
        LogSink("out", data, key="user").recover([txn])
    assert _ids(data) == []
    proc.stdin.close()
    proc.wait(timeout=30)
    LogSink("out", data, key="user").recover([txn])  # the first instance is gone
    assert _ids(data) == [0]


def test_producer_ids_are_distinct_across_sinks_and_stable_across_restarts(data: Path) -> None:
    a, b = sl.sinks.log("out", data), sl.sinks.log("out", data)
    ids = {a.producer_id(0), a.producer_id(1), b.producer_id(0), b.producer_id(1)}
    assert len(ids) == 4 and all(0 <= i < 2**62 for i in ids)
    wa = _writer(a, 1)
    txn = wa.pre_commit(1)
    _die(wa)
    restarted = sl.sinks.log("out", data)
    restarted.recover([txn])
    assert restarted.txn_id == a.txn_id and restarted.producer_id(1) == wa.producer_id


def test_abandoned_staging_directories_are_collected(data: Path) -> None:
    old = sl.sinks.log("out", data, key="user")
    w = _writer(old)
    w.write(_rows(0, 10))
    w.pre_commit(1)
    w.close()  # the job is gone: its pre-committed file stays
    running = sl.sinks.log("out", data, key="user")
    wr = _writer(running)  # holds its directory
    assert len(_staged(old)) == 1
    w3 = _writer(sl.sinks.log("out", data, key="user"))
    assert len(_staged(old)) == 1
    w3.close()
    w4 = _writer(sl.sinks.log("out", data, key="user", transaction_timeout=0))
    assert _staged(old) == []
    assert os.path.isdir(running.staging_dir()), "a running sink's directory is kept"
    w4.close()
    wr.close()


def test_without_checkpoints_the_sink_appends_at_once(data: Path) -> None:
    sink = sl.sinks.log("out", data, key="user")
    w = sink.create_writer(0, 1)
    w.open()
    w.write(_rows(0, 10))
    assert _ids(data) == list(range(10))
    w.close()
    assert not os.path.exists(sink.staging_root())


# -- a checkpointing job, stopped and resumed -----------------------------------------------------

ROWS = [{"user": f"u{i % 7}", "ts": i * 37, "v": i} for i in range(4000)]


def _build(flow: sl.Flow, data_dir: Path, extra: sl.sinks.CollectSink | None = None) -> None:
    out = (
        flow.source(sl.sources.memory(ROWS, batch_size=100), time="ts", watermark="200ms")
        .key_by("user")
        .window(sl.windows.tumbling("1s"))
        .agg(n=sl.agg.count(), s=sl.agg.sum("v"))
    )
    out.sink(sl.sinks.log("out", data_dir, key="user"))
    if extra is not None:
        out.sink(extra)


def test_a_job_stopped_and_resumed_writes_the_failure_free_output(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    Log(ref).create_topic("out", partitions=3)
    f = sl.Flow("job")
    _build(f, ref)
    res = f.run()
    want = _topic(ref).drop("offset")
    assert want.height > 100

    d = tmp_path / "data"
    Log(d).create_topic("out", partitions=3)
    runs = 0
    for attempt in range(60):
        f = sl.Flow("job")
        _build(f, d, StopAfter(f, 2 + attempt % 3))
        res = f.run(checkpoint_dir=tmp_path / "ckpt", checkpoint_interval=None)
        runs += 1
        got = _topic(d).drop("offset")
        assert got.height == got.unique().height, "no row twice, at any time"
        if not res.stopped:
            break
    assert runs > 3
    assert same_rows(_topic(d).drop("offset"), want)
    assert _staged(sl.sinks.log("out", d)) == []


def test_a_job_with_a_log_sink_reports_exactly_once(tmp_path: Path) -> None:
    Log(tmp_path / "d").create_topic("out")
    f = sl.Flow("eo")
    f.source(sl.sources.memory(ROWS[:10])).sink(sl.sinks.log("out", tmp_path / "d"))
    assert f.run(checkpoint_dir=tmp_path / "ckpt").guarantee == "exactly-once"


# -- SIGKILL -------------------------------------------------------------------------------------

#: JSONL files -> keyed windows -> the log sink, checkpointing every 40 ms.
JOB = """
import sys, time
import sluice as sl

src, data, ckpt = sys.argv[1:4]

def slow(row):
    if row["i"] % 50 == 0:
        time.sleep(0.004)  # pacing, so that kills land mid-job
    return True

flow = sl.Flow("logjob", max_batch_rows=200)
(
    flow.source(sl.sources.jsonl(src), time="ts", watermark="1s")
    .filter(slow)
    .key_by("user")
    .window(sl.windows.tumbling("500ms"))
    .agg(n=sl.agg.count(), total=sl.agg.sum("amount"), last=sl.agg.max("i"))
    .sink(sl.sinks.log("out", data, key="user", staging_buffer=20_000))
)
flow.run(parallelism=2, checkpoint_dir=ckpt, checkpoint_interval="40ms")
"""


def _input(src: Path, n: int = 6000) -> None:
    rng = random.Random(3)
    src.mkdir()
    for f in range(2):
        lines = []
        for j in range(n // 2):
            i = f * (n // 2) + j
            ev = {"i": i, "user": f"u{rng.randint(0, 40)}", "amount": rng.randint(1, 9)}
            lines.append(json.dumps({**ev, "ts": j * 3 + rng.randint(0, 500)}))
        (src / f"events-{f}.jsonl").write_text("\n".join(lines) + "\n")


def _run_job(src: Path, data: Path, ckpt: Path, fault: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("SLUICE_FAULT", None)
    if fault:
        env["SLUICE_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-c", JOB, str(src), str(data), str(ckpt)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def kill_workload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    base = tmp_path_factory.mktemp("logkill")
    src = base / "src"
    _input(src)
    ref = base / "ref"
    Log(ref).create_topic("out", partitions=3)
    p = _run_job(src, ref, base / "ref-ckpt")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    want = _topic(ref).drop("offset")
    assert want.height > 200
    return src, want


def _no_duplicate(data: Path) -> None:
    got = _topic(data).drop("offset")
    assert got.height == got.unique().height, "a row is in the topic twice"


def _episode(src: Path, work: Path, rng: random.Random, faults: list[str], kills: int) -> int:
    """Run the job until it finishes: once per fault point (``SLUICE_FAULT``),
    then killed at a random moment ``kills`` times, then to the end. After every
    run the topic must hold no row twice. Returns the number of runs killed."""
    data, ckpt = work / "data", work / "ckpt"
    Log(data).create_topic("out", partitions=3)
    killed = 0
    for fault in faults:
        p = _run_job(src, data, ckpt, fault)
        _, err = p.communicate(timeout=120)
        assert p.returncode in (0, -signal.SIGKILL), err
        killed += p.returncode == -signal.SIGKILL
        _no_duplicate(data)
    for _ in range(kills):
        p = _run_job(src, data, ckpt)
        try:
            p.wait(timeout=rng.uniform(0.3, 1.5))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            killed += 1
        _, err = p.communicate(timeout=120)
        assert p.returncode in (0, -signal.SIGKILL), err
        _no_duplicate(data)
    p = _run_job(src, data, ckpt)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return killed


def _check(work: Path, want: pl.DataFrame) -> None:
    assert same_rows(_topic(work / "data").drop("offset"), want)
    staging = work / "data" / "staging" / "out"
    assert [p for p in staging.rglob("*") if p.is_file() and p.name != ".lock"] == []


def test_sigkill_inside_commits_and_checkpoints_keeps_the_topic_exactly_once(
    kill_workload: tuple[Path, pl.DataFrame], tmp_path: Path
) -> None:
    src, want = kill_workload
    faults = ["log_commit:2", "commit:2", "manifest:2", "log_commit:5"]
    killed = _episode(src, tmp_path, random.Random(7), faults, kills=1)
    assert killed >= len(faults)
    _check(tmp_path, want)


@pytest.mark.slow
def test_random_sigkills_keep_the_topic_exactly_once(
    kill_workload: tuple[Path, pl.DataFrame], tmp_path: Path, slow_sample: bool
) -> None:
    src, want = kill_workload
    target = 8 if slow_sample else 40
    rng = random.Random(11)
    killed = episode = 0
    while killed < target:
        work = tmp_path / f"episode-{episode}"
        faults = [f"log_commit:{rng.randint(1, 12)}", f"snapshot:{rng.randint(1, 20)}"]
        killed += _episode(src, work, rng, faults if episode % 2 else [], kills=6)
        _check(work, want)
        episode += 1
