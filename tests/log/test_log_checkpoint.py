"""The log as a checkpointed source: a stopped job resumes at the recorded
offsets and produces exactly the output of a run that never stopped."""

from __future__ import annotations

import polars as pl

import sluice as sl
from sluice.log import Log
from tests.helpers import StopAfter, same_rows


def _produce(data_dir, n: int = 4000) -> None:
    log = Log(data_dir)
    log.create_topic("clicks", partitions=3)
    df = pl.DataFrame(
        {
            "user": [f"u{i % 11}" for i in range(n)],
            "amount": [i % 9 for i in range(n)],
            "ts": [i * 7 for i in range(n)],
        }
    )
    with log.producer() as p:
        p.send_batch("clicks", df, key="user")


def _build(flow: sl.Flow, data_dir, sink) -> None:
    (
        flow.source(
            sl.sources.log("clicks", data_dir, from_="earliest"),
            time="ts",
            watermark="100ms",
            max_batch_rows=200,
        )
        .key_by("user")
        .window(sl.windows.tumbling("1s"))
        .agg(n=sl.agg.count(), total=sl.agg.sum("amount"))
        .sink(sink)
    )


def test_log_source_resumes_from_checkpointed_offsets(tmp_path):
    _produce(tmp_path / "data")
    ref = sl.sinks.collect()
    f = sl.Flow("j")
    _build(f, tmp_path / "data", ref)
    f.run(parallelism=2)
    want = ref.to_polars()
    assert want["n"].sum() == 4000

    parts = []
    for _ in range(100):
        f = sl.Flow("j")
        sink = StopAfter(f, 2)
        _build(f, tmp_path / "data", sink)
        res = f.run(parallelism=2, checkpoint_dir=tmp_path / "ckpt")
        parts.append(sink.to_polars())
        if not res.stopped:
            break
    assert len(parts) > 2
    got = pl.concat([p for p in parts if p.height])
    assert same_rows(got, want)
