"""Checkpoints: stop a job, resume it from its checkpoint, get the same results."""

from __future__ import annotations

import json

import polars as pl
import pytest

import sluice as sl
from sluice.runtime.checkpoint import CheckpointStorage
from tests.helpers import StopAfter, same_rows

ROWS = [{"k": i % 7, "ts": i * 37, "v": i} for i in range(6000)]


def _build(flow: sl.Flow, sink: sl.sinks.CollectSink, kind: str) -> None:
    s = flow.source(sl.sources.memory(ROWS, batch_size=100), time="ts", watermark="200ms")
    ks = s.key_by("k")
    if kind == "window":
        ks.window(sl.windows.tumbling("1s"), allowed_lateness="100ms").agg(
            n=sl.agg.count(), s=sl.agg.sum("v"), l=sl.agg.collect_list("v")
        ).sink(sink)
    elif kind == "session":
        ks.window(sl.windows.session("50ms")).agg(n=sl.agg.count(), s=sl.agg.sum("v")).sink(sink)
    elif kind == "count":
        ks.window(sl.windows.count(10, 3)).agg(s=sl.agg.sum("v")).sink(sink)
    elif kind == "dedup":
        s.with_columns(d=sl.col("v") % 50).key_by("d").dedup(within="2s").sink(sink)
    else:

        class Running(sl.KeyedProcessFunction):
            def process_element(self, row, ctx):
                t = ctx.value_state("t", 0)
                t.update(t.value() + row["v"])
                ctx.register_event_time_timer(ctx.timestamp + 500)

            def on_timer(self, ts, ctx):
                yield {"k": ctx.key, "at": ts, "total": ctx.value_state("t").value()}

        ks.process(Running()).sink(sink)


@pytest.mark.parametrize("kind", ["window", "session", "count", "dedup", "process"])
@pytest.mark.parametrize("parallelism", [1, 3])
def test_stop_and_resume_gives_the_failure_free_output(tmp_path, kind, parallelism):
    ref = sl.sinks.collect()
    f = sl.Flow("job")
    _build(f, ref, kind)
    f.run(parallelism=parallelism)
    want = ref.to_polars()

    parts = []
    for attempt in range(50):
        f = sl.Flow("job")
        sink = StopAfter(f, 3 + attempt % 4)
        _build(f, sink, kind)
        res = f.run(parallelism=parallelism, checkpoint_dir=tmp_path, checkpoint_interval=None)
        parts.append(sink.to_polars())
        if not res.stopped:
            break
        assert res.checkpoints, "a stop takes a final checkpoint"
    else:
        pytest.fail("the job never finished")
    assert attempt > 0
    got = pl.concat([p for p in parts if p.height], how="diagonal_relaxed")
    if kind == "window":
        got = got.with_columns(pl.col("l").list.sort())
        want = want.with_columns(pl.col("l").list.sort())
        got, want = got.drop("l"), want.drop("l")
    assert same_rows(got, want)


def test_rescaling_keyed_state_4_to_2_to_8(tmp_path):
    ref = sl.sinks.collect()
    f = sl.Flow("job")
    _build(f, ref, "window")
    f.run(parallelism=1)
    want = ref.to_polars().drop("l")
    parts = []
    for p in (4, 2, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8):
        f = sl.Flow("job")
        sink = StopAfter(f, 2)
        s = f.source(_FileLike(ROWS), time="ts", watermark="200ms")
        s.key_by("k").window(sl.windows.tumbling("1s"), allowed_lateness="100ms").agg(
            n=sl.agg.count(), s=sl.agg.sum("v"), l=sl.agg.collect_list("v")
        ).sink(sink)
        res = f.run(parallelism=p, checkpoint_dir=tmp_path, checkpoint_interval=None)
        parts.append(sink.to_polars())
        if not res.stopped:
            break
    assert len(parts) >= 3, "the job ran at parallelism 4, then 2, then 8"
    got = pl.concat([x for x in parts if x.height], how="diagonal_relaxed").drop("l")
    assert same_rows(got, want)


class _FileLike(sl.sources.MemorySource):
    """An in-memory source whose splits do not depend on the parallelism (like files)."""

    def create_splits(self, parallelism):
        from sluice.connectors.sources.memory import _FrameSplit

        return [_FrameSplit(self.frame, i, 4, self.batch_size) for i in range(4)]

    def __init__(self, rows):
        super().__init__(rows, batch_size=100)


def test_corrupt_latest_checkpoint_is_skipped_with_a_warning(tmp_path):
    f = sl.Flow("job")
    sink = StopAfter(f, 3)
    _build(f, sink, "window")
    f.run(checkpoint_dir=tmp_path, checkpoint_interval="1ms")
    storage = CheckpointStorage(tmp_path)
    infos = storage.list()
    assert len(infos) >= 2
    newest = infos[-1]
    # flip a byte in one state file of the newest checkpoint
    manifest = json.loads((newest.path / "_manifest.json").read_text())
    victim = newest.path / next(iter(manifest["files"]))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="checksum"):
        loaded = storage.latest()
    assert loaded is not None and loaded.checkpoint_id == infos[-2].checkpoint_id


def test_checkpoint_of_another_key_is_refused(tmp_path, monkeypatch):
    f = sl.Flow("job")
    _build(f, sl.sinks.collect(), "window")
    f.run(checkpoint_dir=tmp_path)
    monkeypatch.setenv("SLUICE_KEY_FILE", str(tmp_path / "other.key"))
    with pytest.warns(UserWarning, match="signature"):
        assert CheckpointStorage(tmp_path).latest() is None


def test_changed_program_is_a_clear_error(tmp_path):
    f = sl.Flow("job")
    sink = StopAfter(f, 2)
    _build(f, sink, "window")
    f.run(checkpoint_dir=tmp_path)
    g = sl.Flow("job")
    g.source(sl.sources.memory(ROWS), time="ts").sink(sl.sinks.collect())
    with pytest.raises(sl.SluiceError, match="does not have"):
        g.run(checkpoint_dir=tmp_path)


def test_the_job_states_its_guarantee_at_start(tmp_path, caplog):
    f = sl.Flow("g")
    f.source(sl.sources.memory(ROWS), time="ts").sink(sl.sinks.collect())
    with caplog.at_level("WARNING", logger="sluice"):
        res = f.run(checkpoint_dir=tmp_path / "a")
    assert res.guarantee == "at-least-once"
    assert "at-least-once" in caplog.text and "two-phase commit" in caplog.text

    caplog.clear()
    g = sl.Flow("g")
    g.source(iter(ROWS), time="ts").sink(sl.sinks.jsonl(str(tmp_path / "out")))
    with caplog.at_level("WARNING", logger="sluice"):
        res = g.run(checkpoint_dir=tmp_path / "b")
    assert res.guarantee == "at-most-once" and "not replayable" in caplog.text

    h = sl.Flow("g")
    h.source(sl.sources.memory(ROWS), time="ts").sink(sl.sinks.jsonl(str(tmp_path / "out2")))
    assert h.run(checkpoint_dir=tmp_path / "c").guarantee == "exactly-once"
    assert h.run().guarantee == "none"
