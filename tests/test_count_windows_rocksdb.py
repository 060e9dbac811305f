"""Count windows with their state on RocksDB.

The count-window suite runs against the RocksDB backend in
``tests/test_windows_rocksdb.py`` (with every other window suite); this file
checks what is specific to the RocksDB path: the state really lives in
RocksDB, results equal a brute-force reading of Flink's ``countWindow``,
snapshots are the memory path's tables (each backend restores the other's),
the asynchronous snapshot is the state as of the barrier, and memory stays
bounded with many keys.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice.operators.aggregations import bind_all
from sluice.operators.base import Clock, Metrics, OperatorContext, TimerService
from sluice.operators.count_windows import CountWindowOperator
from sluice.state.snapshot import Snapshot
from sluice.time.windows import Count, WindowSpec
from tests.helpers import rss_growth

ROOT = Path(__file__).resolve().parents[1]

SPECS = {
    "tumbling": sl.windows.count(5),
    "sliding": sl.windows.count(5, 2),
    "sliding-not-dividing": sl.windows.count(7, 3),
    "slide-larger-than-size": sl.windows.count(3, 5),
    "global": sl.windows.global_(sl.triggers.count(4)),
    "global-purge": sl.windows.global_(sl.triggers.count(4), purge=True),
}


class _Collect:
    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []

    def push_batch(self, batch: pl.DataFrame) -> None:
        self.frames.append(batch)

    def rows(self) -> list[tuple[Any, ...]]:
        frames = [f for f in self.frames if f.height]
        if not frames:
            return []
        return pl.concat(frames).select("k", "n", "s", "l").rows()


def _operator(
    backend: str, spec: WindowSpec, state_dir: Path
) -> tuple[CountWindowOperator, _Collect]:
    aggs = bind_all({"n": sl.agg.count(), "s": sl.agg.sum("v"), "l": sl.agg.collect_list("v")})
    op = CountWindowOperator("w", ["k"], spec, aggs)
    config = {"state_backend": backend, "state_dir": state_dir}
    op.open(OperatorContext("w", 0, 1, TimerService(Clock()), Metrics(), config=config))
    out = _Collect()
    op.output.main.append(out)
    return op, out


def _rows(n: int, keys: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"k": f"k{rng.randrange(keys)}", "v": rng.randint(-50, 50), "ts": i} for i in range(n)]


def _batches(rows: list[dict[str, Any]], seed: int) -> list[pl.DataFrame]:
    """The rows in batches of random sizes (1 to 60), as the runtime delivers them."""
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(rows):
        n = rng.randint(1, 60)
        out.append(pl.DataFrame(rows[i : i + n]).rename({"ts": "__time"}))
        i += n
    return out


def _brute_force(rows: list[dict[str, Any]], spec: WindowSpec) -> list[tuple[Any, ...]]:
    """Flink's semantics, row by row: after every ``slide``-th row of a key, the
    window is the key's last ``size`` rows (global: all rows since the last
    purge, or since the start without purge)."""
    if isinstance(spec, Count):
        size: int | None = spec.size
        slide = spec.slide
    else:
        assert spec.trigger is not None and spec.trigger.count is not None
        slide = spec.trigger.count
        size = slide if spec.purge else None
    seen: dict[str, list[int]] = {}
    out = []
    for r in rows:
        vals = seen.setdefault(r["k"], [])
        vals.append(r["v"])
        c = len(vals)
        if c % slide == 0:
            win = vals[max(0, c - size) :] if size is not None else list(vals)
            out.append((r["k"], len(win), sum(win), win))
    return out


def _sorted(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(rows, key=repr)


def _keyed(snap: Snapshot) -> dict[str, list[tuple[Any, ...]]]:
    return {name: _sorted(df.rows()) for name, df in snap.keyed.items()}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_count_windows_match_a_brute_force_reference(tmp_path, backend, name):
    spec = SPECS[name]
    rows = _rows(3000, 150, seed=1)
    op, out = _operator(backend, spec, tmp_path)
    for b in _batches(rows, seed=2):
        op.push_batch(b)
        if backend == "rocksdb":
            assert op.panes is None and op.counts is None  # nothing kept in memory
    if backend == "rocksdb":
        assert op.store is not None
        assert op.store.tables()["counts"].height == len({r["k"] for r in rows})
    op.close()
    # collect_list keeps arrival order: compare the lists as they are
    assert _sorted(out.rows()) == _sorted(_brute_force(rows, spec))


@pytest.mark.parametrize("name", ["sliding", "global", "slide-larger-than-size"])
def test_snapshots_are_the_same_tables_and_restore_into_either_backend(tmp_path, name):
    spec = SPECS[name]
    rows = _rows(2000, 60, seed=3)
    first, second = rows[:1100], rows[1100:]
    ops = {b: _operator(b, spec, tmp_path / b) for b in ("memory", "rocksdb")}
    for b in _batches(first, seed=4):
        for op, _ in ops.values():
            op.push_batch(b)
    snaps = {b: op.snapshot_state() for b, (op, _) in ops.items()}
    assert set(snaps["rocksdb"].keyed) == {"panes", "counts"}
    assert _keyed(snaps["rocksdb"]) == _keyed(snaps["memory"])
    for b in ("memory", "rocksdb"):
        assert snaps[b].keyed["panes"].columns == snaps["memory"].keyed["panes"].columns
    firsts = {b: out.rows() for b, (_, out) in ops.items()}
    for op, _ in ops.values():
        op.close()
    want = _sorted(_brute_force(rows, spec))
    for source in ("memory", "rocksdb"):
        for target in ("memory", "rocksdb"):
            op, out = _operator(target, spec, tmp_path / f"{source}-{target}")
            op.restore_state(snaps[source])
            for b in _batches(second, seed=5):
                op.push_batch(b)
            op.close()
            assert _sorted(firsts[source] + out.rows()) == want, (source, target)


def test_the_asynchronous_snapshot_is_the_state_at_the_barrier(tmp_path):
    spec = SPECS["sliding"]
    rows = _rows(1500, 40, seed=6)
    op, _ = _operator("rocksdb", spec, tmp_path)
    batches = _batches(rows, seed=7)
    half = len(batches) // 2
    for b in batches[:half]:
        op.push_batch(b)
    at_barrier = _keyed(op.snapshot_state())
    snap = op.checkpoint_snapshot(1)
    assert not snap.keyed and snap.deferred  # nothing scanned at the barrier
    for b in batches[half:]:
        op.push_batch(b)  # the job goes on before the snapshot is built
    assert _keyed(snap.materialize()) == at_barrier
    assert _keyed(op.snapshot_state()) != at_barrier
    op.close()


def test_a_snapshot_that_is_never_built_releases_its_copy(tmp_path):
    op, _ = _operator("rocksdb", SPECS["tumbling"], tmp_path)
    op.push_batch(_batches(_rows(100, 5, seed=8), seed=9)[0])
    snap = op.checkpoint_snapshot(7)
    copies = list(tmp_path.rglob("*.chk-7"))
    assert copies
    snap.discard()
    assert not any(p.exists() for p in copies)
    op.close()


@pytest.mark.parametrize("parallelism", [1, 3])
def test_stop_and_resume_switching_backends_gives_the_failure_free_output(tmp_path, parallelism):
    from tests.helpers import StopAfter, same_rows
    from tests.test_checkpoint_restore import _build

    ref = sl.sinks.collect()
    f = sl.Flow("job", state_backend="memory")
    _build(f, ref, "count")
    f.run(parallelism=parallelism)
    want = ref.to_polars()
    parts, used = [], set()
    for attempt in range(60):
        backend = ("memory", "rocksdb")[attempt % 2]
        used.add(backend)
        f = sl.Flow("job", state_backend=backend, state_dir=tmp_path / "state")
        sink = StopAfter(f, 8 + attempt % 4)
        _build(f, sink, "count")
        res = f.run(
            parallelism=parallelism, checkpoint_dir=tmp_path / "ckpt", checkpoint_interval="20ms"
        )
        parts.append(sink.to_polars())
        if not res.stopped:
            break
    else:
        pytest.fail("the job never finished")
    assert attempt >= 2 and used == {"memory", "rocksdb"}
    got = pl.concat([p for p in parts if p.height], how="diagonal_relaxed")
    assert same_rows(got, want)


_MEASURE = textwrap.dedent(
    """
    import gc, json, sys
    import polars as pl
    import sluice as sl
    from sluice.operators.base import Clock, Metrics, OperatorContext, TimerService
    from sluice.operators.count_windows import CountWindowOperator
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
    # every key stays open: 3 of the 5 rows of its window arrive
    op = CountWindowOperator("w", ["k"], sl.windows.count(5, 5), aggs)
    op.open(OperatorContext("w", 0, 1, TimerService(Clock()), Metrics(), config=config))
    op.output.main.append(Null())
    batch = 50_000

    def feed(keys):
        keys = keys * 3
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
def test_count_window_state_on_rocksdb_has_bounded_memory(tmp_path, slow_sample):
    """More open count windows than fit the budget: memory grows with the
    number of keys on the memory backend, not on RocksDB (8 MiB cache, 4 MiB
    buffers)."""
    n = 100_000 if slow_sample else 1_000_000
    memory = _rss_growth("memory", n, tmp_path / "m")
    rocks = _rss_growth("rocksdb", n, tmp_path / "r")
    print(
        f"RSS growth for {n} open count windows: memory {memory / 2**20:.1f} MiB, "
        f"rocksdb {rocks / 2**20:.1f} MiB"
    )
    assert rocks < 64 << 20
    if not slow_sample:
        assert rocks < memory / 3
