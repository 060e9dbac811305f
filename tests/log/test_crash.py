"""Crash safety: producers killed with SIGKILL mid-append, multi-process use."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time

import pytest

from sluice.log import Log

from .helpers import read_all
from .procs import PRODUCER, python


def _kill_producer_once(data_dir: str, *, seed: int, batch: int) -> int:
    """Run a producer, SIGKILL it at a random moment; return the last acknowledged id."""
    rnd = random.Random(seed)
    proc = python(PRODUCER, data_dir, "t", "always", str(batch), "p", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    acked: list[int] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.endswith("\n"):
                acked.append(int(line))

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(rnd.uniform(0.3, 0.8))
    while not acked and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t.join()
    return acked[-1] if acked else -1


def _check_log(data_dir: str, acked: int) -> int:
    """Reopen (as a new process would), check every acknowledged record is there,
    in order, nothing corrupt; return how many records there are."""
    log = Log(data_dir)
    ids: list[int] = []
    for p in range(log.config("t").partitions):
        vals = read_all(log, "t", p)["value"].to_list()  # raises on any corrupt batch
        got = [int(v.split(b"-")[1]) for v in vals]
        assert got == sorted(got), "order within a partition"
        ids += got
    ids.sort()
    assert len(set(ids)) == len(ids), "no duplicate"
    # every acknowledged record is there; of the batch being written when the
    # process died, the part that went to one partition may be there without the rest
    assert ids[: acked + 1] == list(range(acked + 1)), "acknowledged records lost"
    with log.producer(fsync="always") as prod:  # the partition takes appends again
        prod.send("t", b"after-crash", key="0")
    log.close()
    return len(ids)


def test_sigkill_mid_append_loses_no_acknowledged_record(tmp_path) -> None:
    data_dir = str(tmp_path / "data")
    Log(data_dir).create_topic("t", partitions=2, segment_bytes="64KiB", retention=None)
    acked = _kill_producer_once(data_dir, seed=1, batch=300)
    assert acked > 0
    log = Log(data_dir)
    _check_log(data_dir, acked)
    log.close()


@pytest.mark.slow
def test_repeated_sigkills(tmp_path, slow_sample: bool) -> None:
    rounds = 3 if slow_sample else 25
    rnd = random.Random(7)
    for r in range(rounds):
        data_dir = str(tmp_path / f"data{r}")
        Log(data_dir).create_topic(
            "t",
            partitions=rnd.choice([1, 3]),
            segment_bytes="32KiB",
            retention=None,
            compression=rnd.choice(["none", "zstd", "lz4"]),
        )
        acked = _kill_producer_once(data_dir, seed=r, batch=rnd.choice([1, 50, 2000]))
        _check_log(data_dir, acked)


def test_two_producer_processes_and_a_consumer_process(tmp_path) -> None:
    data_dir = str(tmp_path / "data")
    log = Log(data_dir)
    log.create_topic("t", partitions=3, segment_bytes="64KiB", retention=None)
    consumer = python(
        """
        import sys, time
        from sluice.log import Log
        c = Log(sys.argv[1]).consumer("t", group="g", from_="earliest")
        seen = 0
        deadline = time.monotonic() + 30
        while seen < int(sys.argv[2]) and time.monotonic() < deadline:
            seen += c.poll_batch(timeout=0.1).height
        c.close()
        print(seen, flush=True)
        """,
        data_dir,
        "4000",
        stdout=subprocess.PIPE,
    )
    producers = [
        python(
            """
            import sys
            import polars as pl
            from sluice.log import Log
            log = Log(sys.argv[1])
            with log.producer(fsync="never") as p:
                for i in range(0, 2000, 100):
                    ids = range(i, i + 100)
                    p.send_batch("t", pl.DataFrame({"v": [f"{sys.argv[2]}-{j:06d}" for j in ids],
                                                    "k": [str(j % 10) for j in ids]}), value="v", key="k")
            """,
            data_dir,
            name,
        )
        for name in ("a", "b")
    ]
    for p in producers:
        assert p.wait(60) == 0
    out, _ = consumer.communicate(timeout=60)
    assert int(out) == 4000
    for part in range(3):
        vals = [v.decode() for v in read_all(log, "t", part)["value"].to_list()]
        for name in ("a", "b"):
            mine = [int(v.split("-")[1]) for v in vals if v.startswith(name)]
            assert mine == sorted(mine)  # each producer's order is kept per partition
    assert sum(read_all(log, "t", p).height for p in range(3)) == 4000
    assert sum(r["groups"]["g"]["committed"] for r in log.stats("t")) == 4000


def test_a_real_file_size_limit_is_a_full_disk(tmp_path) -> None:
    """RLIMIT_FSIZE makes writes past a size fail with EFBIG, as a full disk fails
    with ENOSPC: the append is refused, nothing half-written stays."""
    data_dir = str(tmp_path / "data")
    Log(data_dir).create_topic("t", retention=None)
    proc = python(
        """
        import resource, sys
        import polars as pl
        from sluice.log import Log, LogFullError
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
        log = Log(sys.argv[1])
        acked = 0
        with log.producer(fsync="always") as p:
            try:
                while True:
                    df = pl.DataFrame({"v": [f"{acked + j:08d}" + "z" * 1000 for j in range(7)]})
                    p.send_batch("t", df, value="v")
                    acked += 7
            except LogFullError as e:
                assert "nothing was written" in str(e), e
        print(acked, flush=True)
        """,
        data_dir,
        stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    acked = int(out)
    assert acked > 100
    vals = read_all(Log(data_dir), "t")["value"].to_list()
    assert [int(v[:8]) for v in vals] == list(range(acked))
