"""State TTL: value, list and map state expire after their last write (or read),
in processing time or event time; an expired entry is never returned; expired
entries are cleaned up and left out of checkpoints; TTL survives a restore.

Every behavioural test runs on both state backends (memory and rocksdb).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice.errors import ConfigError
from sluice.operators.base import Clock, Metrics, OperatorContext, Target, TimerService
from sluice.operators.process import ProcessOperator
from sluice.runtime.messages import TIME
from sluice.state.snapshot import Snapshot
from tests.helpers import run_collect, same_rows

BACKENDS = ["memory", "rocksdb"]


# -- a process operator driven by hand ---------------------------------------------------


class FakeClock(Clock):
    """A processing-time clock that only moves when the test says so."""

    def __init__(self, now: int = 0) -> None:
        self.t = now

    def now(self) -> int:
        return self.t


class _Collect(Target):
    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []

    def push_batch(self, batch: pl.DataFrame) -> None:
        self.frames.append(batch)

    def push_watermark(self, time: int) -> None:
        pass

    def push_idle(self, idle: bool) -> None:
        pass

    def push_end(self) -> None:
        pass

    def push_barrier(self, barrier: Any) -> None:
        pass


class Harness:
    """One ProcessOperator subtask with a fake clock: push rows and watermarks,
    move the clock, look at the state the backend holds."""

    def __init__(
        self,
        fn: sl.KeyedProcessFunction,
        *,
        backend: str = "memory",
        keys: tuple[str, ...] = ("k",),
        now: int = 0,
        state_dir: Any = None,
        restore: Snapshot | None = None,
    ) -> None:
        self.clock = FakeClock(now)
        self.timers = TimerService(self.clock)
        self.op = ProcessOperator("probe", list(keys), fn)
        self.out = _Collect()
        self.op.output.main.append(self.out)
        config = {"state_backend": backend, "state_dir": state_dir}
        self.op.open(OperatorContext("probe", 0, 1, self.timers, Metrics(), config=config))
        if restore is not None:
            self.op.restore_state(restore)

    def push(self, *rows: dict[str, Any], ts: int | None = None) -> list[dict[str, Any]]:
        """Process ``rows`` (with event time ``ts`` if given); the rows emitted."""
        before = len(self.out.frames)
        df = pl.DataFrame(list(rows))
        if ts is not None:
            df = df.with_columns(pl.lit(ts, dtype=pl.Int64).alias(TIME))
        self.op.push_batch(df)
        return [r for f in self.out.frames[before:] for r in f.drop(TIME, strict=False).to_dicts()]

    def watermark(self, t: int) -> None:
        self.op.push_watermark(t)

    def advance_to(self, t: int) -> None:
        """Move the processing clock to ``t`` and fire the timers due."""
        self.clock.t = t
        self.timers.fire_due()

    def cells(self, kind: str, name: str) -> int:
        """How many cells the backend holds for state ``name`` (expired or not)."""
        b = self.op.backend
        table = {"value": b.value_table, "list": b.list_table, "map": b.map_table}[kind](name)
        return sum(1 for _ in table.scan())

    def snapshot(self) -> Snapshot:
        return self.op.snapshot_state()

    def close(self) -> None:
        self.op.close()


class Probe(sl.KeyedProcessFunction):
    """Reads and writes value, list and map state as each row says.

    ``op`` is ``"write"`` (value := x, list += x, map[x] := x), ``"read"`` (emit
    what the three states hold) or ``"touch"`` (read and emit nothing).
    """

    def __init__(self, **ttl: Any) -> None:
        self.ttl = ttl

    def process_element(self, row, ctx):
        v = ctx.value_state("v", **self.ttl)
        lst = ctx.list_state("l", **self.ttl)
        m = ctx.map_state("m", **self.ttl)
        if row["op"] == "write":
            v.update(row["x"])
            lst.add(row["x"])
            m.put(row["x"], row["x"] * 10)
        elif row["op"] == "read":
            yield {
                "k": ctx.key,
                "value": v.value(),
                "list": lst.get(),
                "map": sorted(m.items()),
            }
        else:
            v.value(), lst.get(), list(m.items())


def W(k: str, x: int) -> dict[str, Any]:
    return {"k": k, "op": "write", "x": x}


def R(k: str) -> dict[str, Any]:
    return {"k": k, "op": "read", "x": 0}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def harness(backend: str, tmp_path: Any):
    made: list[Harness] = []

    def make(fn: sl.KeyedProcessFunction, **kw: Any) -> Harness:
        h = Harness(fn, backend=backend, state_dir=tmp_path / f"state{len(made)}", **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


# -- processing time ------------------------------------------------------------------------


def test_value_list_and_map_expire_ttl_after_the_last_write(harness):
    h = harness(Probe(ttl="1s"))
    h.push(W("a", 1))
    h.advance_to(600)
    h.push(W("a", 2))
    h.advance_to(999)
    assert h.push(R("a")) == [{"k": "a", "value": 2, "list": [1, 2], "map": [[1, 10], [2, 20]]}]
    h.advance_to(1000)  # the first write is expired, the second lives until 1600
    assert h.push(R("a")) == [{"k": "a", "value": 2, "list": [2], "map": [[2, 20]]}]
    h.advance_to(1600)
    assert h.push(R("a")) == [{"k": "a", "value": None, "list": [], "map": []}]


def test_an_expired_value_is_never_returned_even_before_cleanup(harness):
    h = harness(Probe(ttl="1s"))
    h.push(W("a", 1))
    h.clock.t = 5_000  # no timer fires, no batch ran: nothing was cleaned up yet
    assert (h.cells("value", "v"), h.cells("list", "l"), h.cells("map", "m")) == (1, 1, 1)
    assert h.push(R("a")) == [{"k": "a", "value": None, "list": [], "map": []}]
    assert (h.cells("value", "v"), h.cells("list", "l"), h.cells("map", "m")) == (0, 0, 0)


def test_a_write_restarts_the_time_to_live(harness):
    h = harness(Probe(ttl="1s"))
    h.push(W("a", 1))
    h.advance_to(900)
    h.push(W("a", 1))  # same list element added again, same map entry rewritten
    h.advance_to(1500)
    assert h.push(R("a")) == [{"k": "a", "value": 1, "list": [1], "map": [[1, 10]]}]


def test_update_on_read_restarts_the_time_to_live_on_reads_too(harness):
    h = harness(Probe(ttl="1s", update_on_read=True))
    h.push(W("a", 1))
    h.advance_to(800)
    h.push({"k": "a", "op": "touch", "x": 0})
    h.advance_to(1700)
    assert h.push(R("a")) == [{"k": "a", "value": 1, "list": [1], "map": [[1, 10]]}]
    h.advance_to(2700)  # the read at 1700 restarted it again: 2700 is its end
    assert h.push(R("a")) == [{"k": "a", "value": None, "list": [], "map": []}]


def test_without_update_on_read_reads_do_not_extend_the_ttl(harness):
    h = harness(Probe(ttl="1s"))
    h.push(W("a", 1))
    h.advance_to(800)
    h.push({"k": "a", "op": "touch", "x": 0})
    h.advance_to(1000)
    assert h.push(R("a")) == [{"k": "a", "value": None, "list": [], "map": []}]


def test_map_entries_expire_one_by_one(harness):
    class Maps(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            m = ctx.map_state("m", ttl=1000)
            if row["op"] == "put":
                m.put(row["mk"], row["x"])
            else:
                yield {
                    "keys": sorted(m.keys()),
                    "has_x": m.contains("x"),
                    "x": m.get("x", -1),
                    "empty": m.is_empty(),
                }

    h = harness(Maps())
    h.push({"k": "a", "op": "put", "mk": "x", "x": 1})
    h.advance_to(400)
    h.push({"k": "a", "op": "put", "mk": "y", "x": 2})
    h.advance_to(1000)
    read = {"k": "a", "op": "get", "mk": "", "x": 0}
    assert h.push(read) == [{"keys": ["y"], "has_x": False, "x": -1, "empty": False}]
    h.advance_to(1400)
    assert h.push(read) == [{"keys": [], "has_x": False, "x": -1, "empty": True}]


def test_expired_state_is_cleaned_up_without_being_read(harness):
    h = harness(Probe(ttl="1s"))
    h.push(*[W(f"k{i}", i) for i in range(500)])
    assert h.cells("value", "v") == 500
    # no input: the periodic cleanup (every second of processing time) sweeps
    h.advance_to(1_000)
    h.advance_to(2_000)
    assert (h.cells("value", "v"), h.cells("list", "l"), h.cells("map", "m")) == (0, 0, 0)


def test_cleanup_keeps_pace_with_input(harness):
    h = harness(Probe(ttl="1s"))
    for second in range(10):
        h.clock.t = second * 1000
        h.push(*[W(f"k{second}-{i}", i) for i in range(200)])
    # only the keys of the last second (and at most what one pass missed) remain
    assert h.cells("value", "v") <= 400
    assert h.cells("map", "m") <= 400


def test_checkpoints_leave_out_expired_entries_and_keep_write_times(harness):
    h = harness(Probe(ttl="1s"))
    h.push(W("old", 1))
    h.advance_to(700)
    h.push(W("new", 2))
    h.clock.t = 1200  # "old" expired (not cleaned up yet), "new" lives until 1700
    snap = h.snapshot()
    for label in ("value_state", "list_state", "map_state"):
        df = snap.keyed[label]
        assert df["k"].to_list() == ["new"], label
        assert df["ttl_ts"].to_list() == [700], label


def test_processing_time_ttl_survives_a_restore_on_either_backend(harness, backend):
    h = harness(Probe(ttl="1s"))
    h.push(W("a", 1))
    h.advance_to(500)
    h.push(W("b", 2))
    snap = h.snapshot()
    for target in BACKENDS:
        r = harness(Probe(ttl="1s"), restore=snap, now=900)
        r.op._backend_name = target
        assert r.push(R("a"), R("b")) == [
            {"k": "a", "value": 1, "list": [1], "map": [[1, 10]]},
            {"k": "b", "value": 2, "list": [2], "map": [[2, 20]]},
        ]
        r.advance_to(1000)  # a was written at 0 before the restore: expired now
        assert r.push(R("a"), R("b")) == [
            {"k": "a", "value": None, "list": [], "map": []},
            {"k": "b", "value": 2, "list": [2], "map": [[2, 20]]},
        ]


# -- event time ----------------------------------------------------------------------------


def test_event_time_ttl_counts_on_the_watermark(harness):
    h = harness(Probe(ttl="1s", ttl_time="event"))
    h.push(W("a", 1), ts=100)  # written at event time 100: expires at watermark 1100
    h.watermark(1099)
    assert h.push(R("a"), ts=1200) == [{"k": "a", "value": 1, "list": [1], "map": [[1, 10]]}]
    # the processing clock does not matter
    h.advance_to(10**9)
    assert h.push(R("a"), ts=1200)[0]["value"] == 1
    h.watermark(1100)
    assert h.push(R("a"), ts=1200) == [{"k": "a", "value": None, "list": [], "map": []}]


def test_event_time_writes_are_stamped_with_the_record_time_never_behind_the_watermark(harness):
    h = harness(Probe(ttl="1s", ttl_time="event"))
    h.watermark(5_000)
    h.push(W("late", 1), ts=10)  # a late record: stamped 5000, not 10
    h.push(W("early", 2), ts=9_000)  # ahead of the watermark: stamped 9000
    h.watermark(5_999)
    got = h.push(R("late"), R("early"), ts=9_000)
    assert [r["value"] for r in got] == [1, 2]
    h.watermark(6_000)
    got = h.push(R("late"), R("early"), ts=9_000)
    assert [r["value"] for r in got] == [None, 2]
    h.watermark(10_000)
    got = h.push(R("late"), R("early"), ts=10_000)
    assert [r["value"] for r in got] == [None, None]


def test_event_time_ttl_is_swept_as_the_watermark_advances(harness):
    h = harness(Probe(ttl="1s", ttl_time="event"))
    h.push(*[W(f"k{i}", i) for i in range(100)], ts=0)
    assert h.cells("value", "v") == 100
    for t in range(1_000, 1_004):  # each watermark sweeps a bounded number of entries
        h.watermark(t)
    assert (h.cells("value", "v"), h.cells("list", "l"), h.cells("map", "m")) == (0, 0, 0)


def test_inside_an_event_time_timer_the_ttl_clock_is_the_timer_time(harness):
    class Later(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            ctx.value_state("v", ttl="1s", ttl_time="event").update(row["x"])
            ctx.register_event_time_timer(ctx.timestamp + 500)

        def on_timer(self, timestamp, ctx):
            yield {"at": timestamp, "v": ctx.value_state("v", ttl="1s", ttl_time="event").value()}

    h = harness(Later())
    h.push({"k": "a", "x": 7}, ts=0)
    h.watermark(10_000)  # far past the TTL, but the timer at 500 sees the state as of 500
    assert h.out.frames[-1].drop(TIME).to_dicts() == [{"at": 500, "v": 7}]


def test_event_time_ttl_needs_event_time():
    class F(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            ctx.value_state("v", ttl="1s", ttl_time="event").update(1)

    with pytest.raises(ConfigError, match="ttl_time='event' needs a stream with event time"):
        run_collect(lambda f: f.source([{"k": 1}]).key_by("k").process(F()))


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": "soon"}, "cannot parse 'soon'"),
        ({"ttl": 0}, "must be > 0"),
        ({"ttl": "1s", "ttl_time": "wall"}, "ttl_time must be 'processing' or 'event'"),
        ({"update_on_read": True}, "update_on_read=True needs a ttl"),
    ],
)
def test_bad_ttl_settings_are_clear_errors(kwargs, message):
    class F(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            ctx.list_state("seen", **kwargs)

    with pytest.raises(ConfigError, match=message):
        run_collect(lambda f: f.source([{"k": 1}]).key_by("k").process(F()))


def test_one_state_name_has_one_configuration(harness):
    class Twice(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            ctx.value_state("seen", ttl="1h")
            ctx.value_state("seen", ttl="2h")

    with pytest.raises(
        ConfigError, match=r"state 'seen' is declared as value_state\(ttl=3600000ms"
    ):
        harness(Twice()).push(W("a", 1))

    class Kinds(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            ctx.value_state("seen")
            ctx.map_state("seen")

    with pytest.raises(ConfigError, match="one kind and one TTL"):
        harness(Kinds()).push(W("a", 1))


def test_the_same_declaration_gives_the_same_state_object(harness):
    class Same(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            a = ctx.list_state("l", ttl="1m")
            b = ctx.list_state("l", ttl=60_000)
            yield {"same": a is b}

    assert harness(Same()).push(W("a", 1)) == [{"same": True}]


def test_the_default_of_a_value_state_is_per_call(harness):
    class Defaults(sl.KeyedProcessFunction):
        def process_element(self, row, ctx):
            yield {"a": ctx.value_state("v", 0).value(), "b": ctx.value_state("v", -1).value()}

    assert harness(Defaults()).push(W("a", 1)) == [{"a": 0, "b": -1}]


# -- through a flow, with checkpoints --------------------------------------------------------


class FirstInWindow(sl.KeyedProcessFunction):
    """Emit a row when its key was not seen for ``ttl`` of event time (dedup with TTL)."""

    def process_element(self, row, ctx):
        seen = ctx.value_state("seen", ttl="400ms", ttl_time="event")
        hits = ctx.list_state("hits", ttl="400ms", ttl_time="event")
        hits.add(row["v"])
        if seen.value() is None:
            seen.update(row["v"])
            yield {"k": ctx.key, "v": row["v"], "hits": len(hits.get())}


ROWS = [{"k": i % 5, "ts": i * 29 + (i % 3) * 7, "v": i} for i in range(3000)]


def _ttl_flow(flow: sl.Flow, sink: sl.sinks.CollectSink) -> None:
    src = sl.sources.memory(ROWS, batch_size=7)
    flow.source(src, time="ts", watermark="50ms").key_by("k").process(FirstInWindow()).sink(sink)


def test_ttl_survives_stop_and_resume(tmp_path, backend):
    """Stop the job often and resume it from its checkpoint: the same output as a
    run without stops, which needs the write times of the state restored.

    (One subtask: with several, where the watermark stands when a record arrives
    depends on how the inputs interleave, and so does event-time TTL.)"""
    from tests.test_checkpoint_restore import StopAfter

    parallelism = 1

    ref = sl.sinks.collect()
    f = sl.Flow("ttl", state_backend=backend, state_dir=tmp_path / "state")
    _ttl_flow(f, ref)
    f.run(parallelism=parallelism)
    want = ref.to_polars()
    assert 0 < want.height < len(ROWS)

    parts = []
    for attempt in range(40):
        f = sl.Flow("ttl", state_backend=backend, state_dir=tmp_path / "state")
        sink = StopAfter(f, 4 + attempt % 3)
        _ttl_flow(f, sink)
        res = f.run(parallelism=parallelism, checkpoint_dir=tmp_path / "ckpt")
        parts.append(sink.to_polars())
        if not res.stopped:
            break
    assert attempt > 0
    got = pl.concat([p for p in parts if p.height], how="diagonal_relaxed")
    assert same_rows(got, want)
