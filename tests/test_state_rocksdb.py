"""The RocksDB state backend: same behaviour as the memory backend, state on
disk, memory that does not grow with the number of keys, and checkpoints that
restore into either backend.

(The TTL behaviour tests of ``test_state_ttl.py`` run on both backends too.)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sluice as sl
from sluice.errors import ConfigError, SluiceError
from sluice.operators.process import ProcessOperator
from sluice.state.rocksdb import RocksDBOptions, RocksDBStateBackend, decode_key, encode_key
from sluice.state.snapshot import Snapshot
from tests.helpers import rss_growth, run_collect, same_rows
from tests.test_checkpoint_restore import StopAfter, _build
from tests.test_process import SessionAlert
from tests.test_state_ttl import BACKENDS, Harness

ROOT = Path(__file__).resolve().parents[1]

# -- key encoding ----------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**130), max_value=2**130),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
)
keys = st.recursive(scalars, lambda inner: st.tuples(inner, inner) | st.tuples(inner), max_leaves=6)


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (1, 1.0 and True differ)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and (a == b or (a != a and b != b))


@given(keys)
def test_keys_round_trip_through_their_encoding(key):
    assert _same(decode_key(encode_key(key)), key)


def test_keys_equal_in_a_dict_are_equal_when_encoded():
    assert encode_key(-0.0) == encode_key(0.0)
    # but types are kept apart: the memory backend would merge these
    assert len({encode_key(1), encode_key(1.0), encode_key(True)}) == 3


@given(keys, keys)
def test_no_key_encoding_is_a_prefix_of_another(a, b):
    ea, eb = encode_key(a), encode_key(b)
    if _same(a, b):
        assert ea == eb
    else:
        assert not eb.startswith(ea)


def test_a_key_of_another_type_is_a_clear_error():
    rows = [{"day": dt.date(2024, 5, 1), "v": 1}]

    class Count(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            ctx.value_state("n", 0).update(1)

    with pytest.raises(SluiceError, match=r"cannot use datetime.date\(2024, 5, 1\).*cast the key"):
        run_collect(
            lambda f: f.source(rows).key_by("day").process(Count()), state_backend="rocksdb"
        )
    # the memory backend takes any hashable key
    run_collect(lambda f: f.source(rows).key_by("day").process(Count()))


# -- same behaviour as the memory backend ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_event_time_timers_and_state_per_key(backend, tmp_path):
    rows = [
        {"user": "a", "ts": 0, "v": 1},
        {"user": "b", "ts": 100, "v": 5},
        {"user": "a", "ts": 500, "v": 2},
        {"user": "a", "ts": 3000, "v": 7},
        {"user": "b", "ts": 3100, "v": 1},
    ]
    got = run_collect(
        lambda f: (
            f.source(sl.sources.memory(rows, batch_size=1), time="ts")
            .key_by("user")
            .process(SessionAlert())
        ),
        state_backend=backend,
        state_dir=tmp_path,
    )
    assert got.rows() == [("b", 5, 1100), ("a", 10, 4000), ("b", 1, 4100)]


class Everything(sl.KeyedProcessFunction):
    """Uses every method of the three kinds of state; emits what it sees."""

    def process_element(self, row, ctx):
        v = ctx.value_state("v", 0)
        lst = ctx.list_state("l")
        m = ctx.map_state("m")
        op, x = row["op"], row["x"]
        if op == "add":
            v.update(v.value() + x)
            lst.add(x)
            m.put(x, m.get(x, 0) + 1)
        elif op == "bulk":
            lst.add_all([x, x + 1])
            m.put_all({x: 100, (x, "t"): 1})
        elif op == "replace":
            lst.update([x])
        elif op == "remove":
            m.remove(x)
        elif op == "clear":
            v.clear()
            lst.clear()
            m.clear()
        yield {
            "key": ctx.key,
            "v": v.value(),
            "l": json.dumps(lst.get()),
            "m": json.dumps(sorted(map(repr, m.items()))),
            "has": m.contains(x),
            "n": len(list(m.keys())),
            "vals": sum(1 for _ in m.values()),
            "empty": m.is_empty(),
        }


EVERYTHING_ROWS = [
    {"k": k, "op": op, "x": x}
    for k, op, x in [
        ("a", "add", 1),
        ("b", "add", 5),
        ("a", "add", 1),
        ("a", "bulk", 3),
        ("a", "remove", 1),
        ("b", "replace", 9),
        ("a", "add", 2),
        ("b", "clear", 0),
        ("b", "add", 4),
        ("a", "replace", 7),
    ]
]


def test_every_state_method_behaves_the_same_on_both_backends(tmp_path):
    outs = [
        run_collect(
            lambda f: f.source(EVERYTHING_ROWS).key_by("k").process(Everything()),
            state_backend=b,
            state_dir=tmp_path / b,
        )
        for b in BACKENDS
    ]
    assert outs[0].equals(outs[1])
    last_a = outs[0].filter(pl.col("key") == "a").row(-1, named=True)
    assert last_a["v"] == 4 and last_a["l"] == "[7]"
    assert last_a["m"] == json.dumps(sorted(["(2, 1)", "(3, 100)", "((3, 't'), 1)"]))


def test_multi_column_keys(tmp_path):
    rows = [{"a": i % 3, "b": str(i % 2), "v": i} for i in range(12)]

    class Sum(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            s = ctx.value_state("s", 0)
            s.update(s.value() + row["v"])
            yield {"a": ctx.key[0], "b": ctx.key[1], "s": s.value()}

    outs = [
        run_collect(
            lambda f: f.source(rows).key_by("a", "b").process(Sum()),
            state_backend=b,
            state_dir=tmp_path,
        )
        for b in BACKENDS
    ]
    assert outs[0].equals(outs[1])
    final = outs[1].group_by("a", "b").agg(pl.col("s").max()).sort("a", "b")
    assert final.rows() == [
        (0, "0", 0 + 6),
        (0, "1", 3 + 9),
        (1, "0", 4 + 10),
        (1, "1", 1 + 7),
        (2, "0", 2 + 8),
        (2, "1", 5 + 11),
    ]


def test_long_lists_append_in_order(tmp_path):
    class Append(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            ctx.list_state("l").add(row["v"])

        def on_timer(self, ts, ctx):
            yield {"k": ctx.key, "n": len(ctx.list_state("l").get())}

    h = Harness(Append(), backend="rocksdb", state_dir=tmp_path)
    h.push(*[{"k": i % 2, "v": i} for i in range(3000)])
    h.op.backend.set_current_key(0)
    assert [v for _, v in h.op.backend.list_table("l").get()] == list(range(0, 3000, 2))
    h.close()


# -- files -----------------------------------------------------------------------------------


def test_state_lives_under_state_dir_per_operator_and_subtask_and_is_removed_on_close(tmp_path):
    h = Harness(Everything(), backend="rocksdb", state_dir=tmp_path)
    h.push(*EVERYTHING_ROWS)
    assert (tmp_path / "probe" / "0" / "CURRENT").exists()
    h.close()
    assert not (tmp_path / "probe" / "0").exists()


def test_without_state_dir_a_temporary_directory_is_used_and_removed():
    h = Harness(Everything(), backend="rocksdb")
    b = h.op.backend
    assert isinstance(b, RocksDBStateBackend)
    h.push(*EVERYTHING_ROWS)
    assert b.path.exists()
    h.close()
    assert not b.path.parent.exists()


def test_files_left_by_an_earlier_run_are_not_reused(tmp_path):
    old = RocksDBStateBackend(tmp_path / "probe" / "0")
    old.set_current_key("a")
    old.value_table("v").put(None, 41)
    old.db.close()  # a crash: closed without removing its files
    h = Harness(Everything(), backend="rocksdb", state_dir=tmp_path)
    assert h.push({"k": "a", "op": "add", "x": 1})[0]["v"] == 1
    h.close()


def test_a_state_dir_in_use_is_a_clear_error(tmp_path):
    h = Harness(Everything(), backend="rocksdb", state_dir=tmp_path)
    with pytest.raises(ConfigError, match="in use by another job"):
        Harness(Everything(), backend="rocksdb", state_dir=tmp_path)
    h.close()


def test_an_unknown_backend_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown state backend 'disk'"):
        Harness(Everything(), backend="disk")


# -- checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize("parallelism", [1, 3])
def test_checkpoints_restore_across_backends(tmp_path, parallelism):
    """Stop and resume the job many times, switching backend at every resume."""
    ref = sl.sinks.collect()
    f = sl.Flow("job")
    _build(f, ref, "process")
    f.run(parallelism=parallelism)
    want = ref.to_polars()
    parts = []
    used = set()
    for attempt in range(50):
        backend = BACKENDS[attempt % 2]
        used.add(backend)
        f = sl.Flow("job", state_backend=backend, state_dir=tmp_path / "state")
        sink = StopAfter(f, 3 + attempt % 4)
        _build(f, sink, "process")
        res = f.run(parallelism=parallelism, checkpoint_dir=tmp_path / "ckpt")
        parts.append(sink.to_polars())
        if not res.stopped:
            break
    assert used == set(BACKENDS)
    got = pl.concat([p for p in parts if p.height], how="diagonal_relaxed")
    assert same_rows(got, want)


@pytest.mark.parametrize("source", BACKENDS)
@pytest.mark.parametrize("target", BACKENDS)
def test_a_snapshot_restores_into_either_backend(tmp_path, source, target):
    h = Harness(Everything(), backend=source, state_dir=tmp_path / "a")
    h.push(*EVERYTHING_ROWS)
    snap = h.snapshot()
    h.close()
    r = Harness(Everything(), backend=target, state_dir=tmp_path / "b", restore=snap)
    got = r.push({"k": "a", "op": "add", "x": 3}, {"k": "b", "op": "add", "x": 4})
    r.close()
    assert got[0]["v"] == 7 and got[0]["l"] == "[7, 3]"
    assert got[0]["m"] == json.dumps(sorted(["(2, 1)", "(3, 101)", "((3, 't'), 1)"]))
    assert got[1]["v"] == 8 and got[1]["l"] == "[4, 4]"


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoints_of_the_previous_format_restore(tmp_path, backend):
    # Sluice <= 0.1 wrote one "values" table with whole values pickled
    import pickle

    old = Snapshot(keys=["k"])
    old.keyed["values"] = pl.DataFrame(
        {
            "k": ["a", "a", "a"],
            "state": ["v", "l", "m"],
            "value": [pickle.dumps(5), pickle.dumps([1, 2]), pickle.dumps({2: 1})],
        }
    )
    h = Harness(Everything(), backend=backend, state_dir=tmp_path, restore=old)
    again = h.snapshot()  # not declared yet: carried over as it was
    assert again.keyed["values"].height == 3
    got = h.push({"k": "a", "op": "add", "x": 2})
    h.close()
    assert got[0]["v"] == 7 and got[0]["l"] == "[1, 2, 2]" and got[0]["m"] == '["(2, 2)"]'


# -- memory ----------------------------------------------------------------------------------

_MEASURE = textwrap.dedent(
    """
    import gc, json, sys
    import polars as pl
    import sluice as sl
    from sluice.operators.base import Clock, Metrics, OperatorContext, TimerService
    from sluice.operators.process import ProcessOperator
    from sluice.state.rocksdb import RocksDBOptions

    def rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) * 1024

    class Count(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            c = ctx.value_state("count", 0)
            c.update(c.value() + 1)
            ctx.value_state("last").update(row["payload"])
            ctx.register_event_time_timer(10**12 + row["k"])

    class Null:
        def push_batch(self, batch):
            pass

    backend, n, state_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    opts = RocksDBOptions(block_cache_bytes=8 << 20, write_buffer_bytes=4 << 20)
    config = {"state_backend": backend, "state_dir": state_dir, "rocksdb_options": opts}
    op = ProcessOperator("count", ["k"], Count())
    op.open(OperatorContext("count", 0, 1, TimerService(Clock()), Metrics(), config=config))
    op.output.main.append(Null())
    batch = 20_000

    def feed(keys):
        op.push_batch(pl.DataFrame({"k": keys, "payload": [f"{k:064d}" for k in keys]}))

    feed(list(range(-batch, 0)))  # warm-up: imports and caches belong to the baseline
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
def test_rocksdb_memory_does_not_grow_with_the_number_of_keys(tmp_path, slow_sample):
    n = 200_000 if slow_sample else 1_000_000
    memory = _rss_growth("memory", n, tmp_path)
    rocks = _rss_growth("rocksdb", n, tmp_path)
    print(
        f"RSS growth for {n} keys: memory {memory / 2**20:.1f} MiB, rocksdb {rocks / 2**20:.1f} MiB"
    )
    assert rocks < memory / 3
    assert rocks < 64 << 20


def test_a_flow_with_more_keys_than_the_memory_budget(tmp_path, monkeypatch):
    """200k keys with a 1 MiB block cache and 1 MiB write buffers: RocksDB's
    memory stays within its budget while the state is many times larger."""
    small = RocksDBOptions(block_cache_bytes=1 << 20, write_buffer_bytes=1 << 20)
    seen: dict[str, Any] = {}
    close = ProcessOperator.close

    def record(self: ProcessOperator) -> None:
        if isinstance(self.backend, RocksDBStateBackend):
            seen["usage"] = self.backend.memory_usage()
            seen["size"] = sum(p.stat().st_size for p in self.backend.path.iterdir())
        close(self)

    monkeypatch.setattr(ProcessOperator, "close", record)
    n = 200_000

    class Count(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            c = ctx.map_state("by_parity")
            n, _ = c.get(row["v"] % 2, (0, None))
            c.put(row["v"] % 2, (n + 1, row["pad"]))

        def on_timer(self, ts, ctx):
            yield {"k": ctx.key, "n": sum(n for _, (n, _) in ctx.map_state("by_parity").items())}

    class Timed(Count):
        def process_element(self, row, ctx):
            super().process_element(row, ctx)
            if row["k"] < 200:  # a few keys report at the end
                ctx.register_event_time_timer(10**12)

    frame = pl.DataFrame(
        {
            "k": [i % n for i in range(2 * n)],
            "v": list(range(2 * n)),
            "pad": [os.urandom(24).hex() for _ in range(2 * n)],  # incompressible
            "ts": 0,
        }
    )
    flow = sl.Flow("many", state_backend="rocksdb", state_dir=tmp_path)
    out = sl.sinks.collect()
    stream = flow.source(sl.sources.memory(frame, batch_size=50_000), time="ts")
    stream.key_by("k").process(Timed()).sink(out)
    monkeypatch.setattr(
        ProcessOperator,
        "open",
        _with_options(ProcessOperator.open, small),
    )
    flow.run()
    got = out.to_polars()
    assert got.height == 200 and set(got["n"].to_list()) == {2}
    usage = seen["usage"]
    assert usage["block_cache"] <= 1 << 20
    assert usage["memtables"] <= 4 << 20
    assert seen["size"] > 8 << 20  # the state is several times larger than the budget


def _with_options(open_: Any, options: Any) -> Any:
    def open_with(self: ProcessOperator, ctx: Any) -> None:
        self._rocksdb_options = options
        open_(self, ctx)

    return open_with


# -- timers ----------------------------------------------------------------------------------


class Timers(sl.KeyedProcessFunction):
    """Registers the timers a row asks for; on_timer reports and may chain timers."""

    def process_element(self, row, ctx):
        for t in row["event"]:
            ctx.register_event_time_timer(t)
        for t in row["processing"]:
            ctx.register_processing_time_timer(t)
        for t in row["cancel"]:
            ctx.delete_event_time_timer(t)
            ctx.delete_processing_time_timer(t)

    def on_timer(self, timestamp, ctx):
        yield {"k": ctx.key, "t": timestamp}
        if timestamp == 20:  # chained timers at or before the watermark fire in this pass
            ctx.register_event_time_timer(15)
            ctx.register_event_time_timer(21)


def _timers(k: str, event=(), processing=(), cancel=()) -> dict[str, Any]:
    return {"k": k, "event": list(event), "processing": list(processing), "cancel": list(cancel)}


def _fired(h: Harness) -> list[tuple[str, int]]:
    out = [(r["k"], r["t"]) for f in h.out.frames for r in f.to_dicts()]
    h.out.frames.clear()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_event_timers_fire_once_in_time_order(tmp_path, backend):
    h = Harness(Timers(), backend=backend, state_dir=tmp_path)
    h.push(_timers("a", event=[30, 20, 30]), _timers("b", event=[10, 40, 50]))
    h.push(_timers("b", cancel=[40]))
    h.watermark(35)
    assert _fired(h) == [("b", 10), ("a", 20), ("a", 15), ("a", 21), ("a", 30)]
    h.watermark(10**6)
    assert _fired(h) == [("b", 50)]
    h.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_processing_timers_fire_when_the_clock_reaches_them(tmp_path, backend):
    h = Harness(Timers(), backend=backend, state_dir=tmp_path)
    h.push(_timers("a", processing=[100, 50, 100]), _timers("b", processing=[70, 80]))
    h.push(_timers("b", cancel=[80]))
    h.advance_to(60)
    assert _fired(h) == [("a", 50)]
    h.advance_to(1000)
    assert _fired(h) == [("b", 70), ("a", 100)]
    h.advance_to(2000)
    assert _fired(h) == []
    h.close()


@pytest.mark.parametrize("source", BACKENDS)
@pytest.mark.parametrize("target", BACKENDS)
def test_timers_restore_into_either_backend(tmp_path, source, target):
    h = Harness(Timers(), backend=source, state_dir=tmp_path / "a")
    h.push(_timers("a", event=[5, 7], processing=[300]), _timers("b", processing=[200]))
    snap = h.snapshot()
    h.close()
    r = Harness(Timers(), backend=target, state_dir=tmp_path / "b", restore=snap, now=100)
    r.advance_to(250)
    r.watermark(6)
    assert _fired(r) == [("b", 200), ("a", 5)]
    r.advance_to(400)
    r.watermark(100)
    assert _fired(r) == [("a", 300), ("a", 7)]
    r.close()


# -- asynchronous snapshots ------------------------------------------------------------------


def _tables(snap: Snapshot) -> dict[str, pl.DataFrame]:
    return {name: df.sort(pl.all()) for name, df in snap.keyed.items()}


def _assert_same_tables(a: Snapshot, b: Snapshot) -> None:
    ta, tb = _tables(a), _tables(b)
    assert set(ta) == set(tb)
    for name in ta:
        assert ta[name].equals(tb[name]), name


def test_the_rocksdb_checkpoint_snapshot_is_built_later_as_of_the_barrier(tmp_path):
    """At the barrier only a RocksDB checkpoint is taken; the tables built from
    it later (after the job changed the state) equal the memory backend's
    snapshot at the barrier, and restore into either backend."""
    rows = [*EVERYTHING_ROWS, _timers("a", event=[50, 70]), _timers("c", processing=[9])]
    mem = Harness(_Both(), backend="memory", state_dir=tmp_path / "m")
    rocks = Harness(_Both(), backend="rocksdb", state_dir=tmp_path / "r")
    for h in (mem, rocks):
        for r in rows:
            h.push(_full(r), ts=10)
    want = mem.op.checkpoint_snapshot(1)
    snap = rocks.op.checkpoint_snapshot(1)
    assert not snap.keyed and len(snap.deferred) == 1  # nothing scanned at the barrier
    # the job goes on: state and timers change before the snapshot is built
    rocks.push(_full({"k": "a", "op": "clear", "x": 0}), _full(_timers("d", event=[5])), ts=20)
    rocks.watermark(60)
    snap.materialize()
    _assert_same_tables(snap, want)
    _assert_same_tables(snap, mem.op.snapshot_state())
    for h in (mem, rocks):
        h.close()
    for target in BACKENDS:
        r = Harness(_Both(), backend=target, state_dir=tmp_path / f"t-{target}", restore=snap)
        got = r.push(_full({"k": "a", "op": "add", "x": 3}), ts=30)
        r.watermark(100)
        assert got[0]["v"] == 7 and got[0]["l"] == "[7, 3]"
        timers = [(f["k"], f["t"]) for x in r.out.frames if "t" in x.columns for f in x.to_dicts()]
        assert sorted(timers) == [("a", 50), ("a", 70)]
        r.close()


class _Both(Everything):
    """:class:`Everything` and :class:`Timers` in one function."""

    def process_element(self, row, ctx):
        Timers.process_element(self, row, ctx)  # type: ignore[arg-type]
        if row["op"] is not None:
            yield from super().process_element(row, ctx)

    def on_timer(self, timestamp, ctx):
        yield {"k": ctx.key, "t": timestamp}


def _full(row: dict[str, Any]) -> dict[str, Any]:
    return {"op": None, "x": 0, "event": [], "processing": [], "cancel": [], **row}


def test_the_asynchronous_snapshot_keeps_ttl_state_live_at_the_barrier(tmp_path):
    """TTL expiry is judged at the barrier, not when the writer thread gets to it."""

    class Ttl(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            ctx.value_state("v", ttl="1s").update(row["x"])

    h = Harness(Ttl(), backend="rocksdb", state_dir=tmp_path, now=0)
    h.push({"k": "a", "x": 1}, {"k": "b", "x": 2})
    h.advance_to(600)
    h.push({"k": "b", "x": 3})
    h.advance_to(900)
    at_barrier = h.op.snapshot_state()
    snap = h.op.checkpoint_snapshot(1)
    h.advance_to(1200)  # "a" (written at 0) has expired by now, "b" (at 600) not
    assert h.op.snapshot_state().keyed["value_state"]["k"].to_list() == ["b"]
    snap.materialize()
    _assert_same_tables(snap, at_barrier)
    assert sorted(snap.keyed["value_state"]["k"].to_list()) == ["a", "b"]
    h.close()


def _filled(tmp_path: Path, n: int) -> Harness:
    """A RocksDB process operator holding ``n`` keys of value and list state,
    whose earlier checkpoint flushed them, then 1000 keys written since."""

    class Fill(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            ctx.value_state("v").update(row["x"])

    h = Harness(Fill(), backend="rocksdb", state_dir=tmp_path / str(n))
    h.push({"k": 0, "x": 0})
    b = h.op.backend
    for table in (b.value_table("v"),):
        for k in range(n):
            b.set_current_key(k)
            table.put(None, k)
    h.op.checkpoint_snapshot(0).discard()  # the previous checkpoint
    h.push(*({"k": k, "x": -k} for k in range(1000)))
    return h


def _blocked(h: Harness, cid: int) -> tuple[float, Snapshot]:
    import time

    t0 = time.perf_counter()
    snap = h.op.checkpoint_snapshot(cid)
    return time.perf_counter() - t0, snap


def test_blocked_time_at_the_barrier_does_not_grow_with_the_state(tmp_path):
    """The barrier takes a RocksDB checkpoint (hard links, plus a flush of what
    was written since the last one), whatever the number of keys; the scan
    into tables happens later. 10k vs 200k keys, best of 3."""
    import time

    times = {}
    for n in (10_000, 200_000):
        h = _filled(tmp_path, n)
        best = float("inf")
        for cid in (1, 2, 3):
            t, snap = _blocked(h, cid)
            best = min(best, t)
            if n == 10_000 or cid < 3:
                snap.discard()
        t0 = time.perf_counter()
        sync = h.op.snapshot_state()
        times[n] = (best, time.perf_counter() - t0)
        if n == 200_000:
            assert snap.materialize().keyed["value_state"].height == n
            _assert_same_tables(snap, sync)
        h.close()
    print(f"checkpoint_snapshot blocked / synchronous scan (s): {times}")
    (small, _), (large, large_sync) = times[10_000], times[200_000]
    assert large < 3 * small + 0.02
    assert large < large_sync / 5
