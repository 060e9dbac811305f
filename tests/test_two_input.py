"""Two-input operators: each batch arrives with the side it came from, keys
meet in one subtask, and the watermark is the minimum of both inputs."""

from __future__ import annotations

import polars as pl
import pytest

import sluice as sl
from sluice.operators.base import TwoInputOperator
from sluice.runtime.messages import TIME


class _Tagger(TwoInputOperator):
    """Tags each row with its side and subtask; emits one watermark row per advance."""

    def __init__(self, subtask: int) -> None:
        super().__init__()
        self.subtask = subtask
        self.name = "tag"

    def process_side(self, side: int, batch: pl.DataFrame) -> None:
        self.emit(
            batch.select("k", TIME).with_columns(
                side=pl.lit(side), subtask=pl.lit(self.subtask), wm=pl.lit(self.watermark)
            )
        )


@pytest.mark.parametrize("parallelism", [1, 3])
def test_sides_and_key_colocation(parallelism: int) -> None:
    f = sl.Flow("two", parallelism=parallelism)
    left = f.source([{"k": i % 7, "t": i} for i in range(50)], time="t", watermark=0)
    right = f.source([{"key": i % 7, "t": i, "x": 1} for i in range(30)], time="t", watermark=0)
    right = right.select(k="key", t="t")
    out = sl.sinks.collect()
    left._two_input(right, "tag", lambda i, n: _Tagger(i), ["k"], ["k"]).sink(out)
    f.run(timeout=30)
    df = out.to_polars()
    assert df.filter(pl.col("side") == 0).height == 50
    assert df.filter(pl.col("side") == 1).height == 30
    # every key lands in exactly one subtask, whichever side it came from
    assert (df.group_by("k").agg(pl.col("subtask").n_unique()).get_column("subtask") == 1).all()


def test_key_count_mismatch_is_an_error() -> None:
    f = sl.Flow("bad")
    a = f.source([{"k": 1}])
    with pytest.raises(sl.ConfigError, match="1 key column"):
        a._two_input(a, "j", lambda i, n: _Tagger(i), ["k"], [])
