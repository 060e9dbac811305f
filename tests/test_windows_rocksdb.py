"""Window semantics on the RocksDB state backend.

Every test of the window suites (time, session, count, property-based) runs
here again with ``state_backend="rocksdb"`` as the default of ``sl.Flow``, so
both backends are held to the same specification; then RocksDB-specific
tests: checkpoints that restore across backends, and bounded memory with more
windows than fit a small budget.
"""

from __future__ import annotations

from typing import Any

import pytest

import sluice as sl
from tests.test_window_property import *  # noqa: F403
from tests.test_windows_count import *  # noqa: F403
from tests.test_windows_session import *  # noqa: F403
from tests.test_windows_time import *  # noqa: F403


@pytest.fixture(autouse=True)
def _rocksdb_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    init = sl.Flow.__init__

    def rocksdb_init(self: sl.Flow, name: str = "flow", **kwargs: Any) -> None:
        kwargs.setdefault("state_backend", "rocksdb")
        init(self, name, **kwargs)

    monkeypatch.setattr(sl.Flow, "__init__", rocksdb_init)


# -- RocksDB specifics -------------------------------------------------------------------------

import textwrap  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import polars as pl  # noqa: E402

from sluice.runtime.checkpoint import CheckpointError, CheckpointStorage  # noqa: E402
from tests.helpers import StopAfter, rss_growth, run_collect, same_rows  # noqa: E402
from tests.test_checkpoint_restore import _build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["memory", "rocksdb"]


@pytest.mark.parametrize("kind", ["window", "session", "dedup"])
@pytest.mark.parametrize("parallelism", [1, 3])
def test_checkpoints_restore_across_backends(tmp_path, kind, parallelism):
    """Stop and resume many times, switching backend at every resume, with
    asynchronous periodic checkpoints too: same output as a failure-free run."""
    ref = sl.sinks.collect()
    f = sl.Flow("job", state_backend="memory")
    _build(f, ref, kind)
    f.run(parallelism=parallelism)
    want = ref.to_polars()
    parts, used = [], set()
    for attempt in range(60):
        backend = BACKENDS[attempt % 2]
        used.add(backend)
        f = sl.Flow("job", state_backend=backend, state_dir=tmp_path / "state")
        sink = StopAfter(f, 3 + attempt % 4)
        _build(f, sink, kind)
        res = f.run(
            parallelism=parallelism, checkpoint_dir=tmp_path / "ckpt", checkpoint_interval="5ms"
        )
        parts.append(sink.to_polars())
        if not res.stopped:
            break
    assert used == set(BACKENDS)
    got = pl.concat([p for p in parts if p.height], how="diagonal_relaxed")
    if kind == "window":
        got, want = got.drop("l"), want.drop("l")
    assert same_rows(got, want)


def _dedup_reference(rows: list[dict[str, Any]], within: int) -> list[int]:
    """Brute force, row by row: keep a row unless a kept row of its key is
    less than ``within`` away (event time)."""
    kept: dict[Any, list[int]] = {}
    out = []
    for r in rows:
        times = kept.setdefault(r["k"], [])
        if all(abs(r["ts"] - t) >= within for t in times):
            times.append(r["ts"])
            out.append(r["i"])
    return out


def test_dedup_on_rocksdb_matches_brute_force_and_the_memory_backend(tmp_path):
    import random

    rng = random.Random(3)
    rows = [
        {"i": i, "k": rng.randint(0, 40), "ts": i * 10 + rng.randint(0, 30)} for i in range(3000)
    ]
    want = _dedup_reference(rows, 500)
    for backend in BACKENDS:
        got = run_collect(
            lambda f: (
                f.source(sl.sources.memory(rows, batch_size=97), time="ts")
                .key_by("k")
                .dedup(within="500ms")
            ),
            state_backend=backend,
            state_dir=tmp_path / backend,
        )
        assert sorted(got["i"].to_list()) == want, backend


def test_dedup_state_expires_with_the_watermark_on_rocksdb(tmp_path):
    from sluice.operators.dedup import DedupOperator

    seen: dict[str, Any] = {}
    close = DedupOperator.close

    def record(self: DedupOperator) -> None:
        if self.store is not None:
            st = self.store.table()
            seen["left"] = 0 if st is None else st.height
        close(self)

    rows = [{"k": i, "ts": i} for i in range(5000)]  # every key once, time moves on
    DedupOperator.close = record  # type: ignore[method-assign]
    try:
        run_collect(
            lambda f: (
                f.source(sl.sources.memory(rows, batch_size=500), time="ts")
                .key_by("k")
                .dedup(within="100ms")
            ),
            state_backend="rocksdb",
            state_dir=tmp_path,
        )
    finally:
        DedupOperator.close = close  # type: ignore[method-assign]
    # only the keys of the last `within` before the final watermark can remain
    assert seen["left"] <= 600


def test_a_failed_snapshot_write_fails_the_checkpoint_and_commits_nothing(tmp_path, monkeypatch):
    def broken(self, pending, node, subtask, snap, files):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CheckpointStorage, "_write_tables", broken)
    rows = [{"k": i % 5, "ts": i, "v": i} for i in range(2000)]
    f = sl.Flow("job", state_backend="rocksdb", state_dir=tmp_path / "state")
    out = tmp_path / "out"
    (
        f.source(sl.sources.memory(rows, batch_size=100), time="ts")
        .key_by("k")
        .window(sl.windows.tumbling("100ms"))
        .agg(s=sl.agg.sum("v"))
        .sink(sl.sinks.jsonl(out))
    )
    with pytest.raises(CheckpointError, match="No space left on device"):
        f.run(checkpoint_dir=tmp_path / "ckpt", checkpoint_interval="1ms")
    assert CheckpointStorage(tmp_path / "ckpt").list() == []
    assert not list(out.glob("part-*"))  # nothing committed


def test_snapshot_files_are_written_off_the_job_thread_and_before_the_manifest(
    tmp_path, monkeypatch
):
    events: list[tuple[str, str]] = []
    write, finish = CheckpointStorage._write_tables, CheckpointStorage.finish

    def spy_write(self, pending, node, subtask, snap, files):
        write(self, pending, node, subtask, snap, files)
        events.append(("write", threading.current_thread().name))

    def spy_finish(self, pending, job, *, finished):
        events.append(("manifest", threading.current_thread().name))
        return finish(self, pending, job, finished=finished)

    monkeypatch.setattr(CheckpointStorage, "_write_tables", spy_write)
    monkeypatch.setattr(CheckpointStorage, "finish", spy_finish)
    ref = sl.sinks.collect()
    f = sl.Flow("job", state_backend="rocksdb", state_dir=tmp_path / "state")
    _build(f, ref, "session")
    res = f.run(checkpoint_dir=tmp_path / "ckpt", checkpoint_interval="10ms")
    assert res.checkpoints
    main = threading.main_thread().name
    assert all(t != main for _, t in events)
    # per checkpoint: every subtask's files, then its manifest
    kinds = [k for k, _ in events]
    n_ops = len(f.physical_plan().nodes)
    assert kinds == (["write"] * n_ops + ["manifest"]) * (len(kinds) // (n_ops + 1))


_MEASURE = textwrap.dedent(
    """
    import gc, json, sys
    import polars as pl
    import sluice as sl
    from sluice.operators.base import Clock, Metrics, OperatorContext, TimerService
    from sluice.operators.windows import WindowOperator
    from sluice.operators.aggregations import bind_all
    from sluice.state.rocksdb import RocksDBOptions

    def rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) * 1024

    class Null:
        def push_batch(self, batch):
            pass

    backend, n, state_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    opts = RocksDBOptions(block_cache_bytes=8 << 20, write_buffer_bytes=4 << 20)
    config = {"state_backend": backend, "state_dir": state_dir, "rocksdb_options": opts}
    aggs = bind_all({"s": sl.agg.sum("v"), "last": sl.agg.last("p")})
    op = WindowOperator("w", ["k"], sl.windows.tumbling("1h"), aggs)
    op.open(OperatorContext("w", 0, 1, TimerService(Clock()), Metrics(), config=config))
    op.output.main.append(Null())
    batch = 50_000

    def feed(keys):
        op.push_batch(pl.DataFrame({"k": keys, "v": 1.0, "p": [f"{k:048d}" for k in keys],
                                    "__time": 0}))

    feed(list(range(-batch, 0)))
    gc.collect()
    base = rss()
    for start in range(0, n, batch):
        feed(list(range(start, min(n, start + batch))))
    gc.collect()
    print(json.dumps({"growth": rss() - base}))
    op.close()
    """
)


def _rss_growth(backend: str, n: int, state_dir: Path) -> int:
    return rss_growth(_MEASURE, backend, n, state_dir)


@pytest.mark.slow
def test_window_state_on_rocksdb_has_bounded_memory(tmp_path, slow_sample):
    """More open windows than fit the budget: memory grows with the number of
    keys on the memory backend, not on RocksDB (8 MiB cache, 4 MiB buffers)."""
    n = 150_000 if slow_sample else 1_000_000
    memory = _rss_growth("memory", n, tmp_path / "m")
    rocks = _rss_growth("rocksdb", n, tmp_path / "r")
    print(
        f"RSS growth for {n} windows: memory {memory / 2**20:.1f} MiB, rocksdb {rocks / 2**20:.1f} MiB"
    )
    assert rocks < 64 << 20
    if not slow_sample:
        assert rocks < memory / 3
