"""Compaction with a bounded offset map (Kafka's dedupe buffer), in several passes."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.errors import ConfigError
from sluice.log import Log
from sluice.log.compaction import ENTRY_BYTES, OffsetMap, compact_partition

from .helpers import read_all
from .test_retention_compaction import _Model, _send, ops


def _dict_add(model: dict[bytes, int], capacity: int, keys: list[bytes], offs: list[int]) -> int:
    """The offset map's contract, as a dict: records fit while their key is known
    or there is room for one more key."""
    for i, (k, o) in enumerate(zip(keys, offs, strict=True)):
        if k not in model and len(model) >= capacity:
            return i
        model[k] = o
    return len(keys)


class _CollidingMap(OffsetMap):
    """Every key has the same first hash: all of them probe through one cluster
    of slots, and only the second hash (and the length) tells them apart."""

    def digests(self, keys: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h1, h2, ln = super().digests(keys)
        return np.zeros_like(h1), h2, ln


@pytest.mark.parametrize("cls", [OffsetMap, _CollidingMap])
@pytest.mark.parametrize("slots", [2, 3, 17, 200])
def test_offset_map_matches_a_dict(cls: type[OffsetMap], slots: int) -> None:
    rng = random.Random(slots)
    m = cls(slots * ENTRY_BYTES)
    model: dict[bytes, int] = {}
    universe = [f"key-{i}".encode() for i in range(3 * slots)] + [b"", b"\x00", b"\x00\x00"]
    off = 0
    for _ in range(40):
        keys = [rng.choice(universe) for _ in range(rng.randint(1, 12))]
        offs = list(range(off, off + len(keys)))
        expect = _dict_add(model, m.capacity, keys, offs)
        assert m.add(pa.array(keys, pa.binary()), np.array(offs)) == expect
        off += expect
        if expect < len(keys):
            break
    assert len(m) == len(model) <= m.capacity == slots
    got = m.latest(pa.array(universe, pa.binary())).tolist()
    assert got == [model.get(k, -1) for k in universe]


def test_a_buffer_too_small_for_one_key_is_refused(log: Log) -> None:
    with pytest.raises(ConfigError, match="compaction_buffer_bytes"):
        OffsetMap(ENTRY_BYTES)
    with pytest.raises(ConfigError, match="compaction_buffer"):
        log.create_topic("t", compact=True, compaction_buffer="10B")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=ops, slots=st.integers(2, 6))
def test_compaction_with_a_tiny_buffer_matches_a_model(tmp_path_factory, ops, slots) -> None:
    """A map of 1 to 5 keys for 6 keys: many passes, the same result as one."""
    log = Log(tmp_path_factory.mktemp("tiny") / "data")
    log.create_topic(
        "t",
        compact=True,
        segment_bytes="4KiB",
        delete_retention="0ms",
        compaction_buffer=slots * ENTRY_BYTES,
    )
    part = log.partition("t", 0)
    model = _Model()
    for op, arg in ops:
        if op == "append":
            _send(log, "t", [(k, v, 1) for k, v in arg])
            model.append(arg)
        elif op == "roll":
            part.roll()
        else:
            compact_partition(part, force=True, now=10**12)
            model.compact(part.state().active_base)
        df = read_all(log, "t")
        got = [
            (o, k.decode(), None if v is None else v.decode())
            for o, k, v in df.select("offset", "key", "value").iter_rows()
        ]
        assert got == model.records
        assert part.high_watermark() == model.next
    log.close()


def _peak_memory(log: Log, topic: str, n_keys: int, buffer: int, per_call: int) -> int:
    """Peak bytes (NumPy/Python and Arrow) of compacting ``n_keys`` keys written
    twice; checks the result against the obvious ground truth on the way."""
    # one closed segment, rolled by hand: no compaction runs before the measured one
    log.create_topic(topic, compact=True, segment_bytes="64MiB")
    _many_keys_to(log, topic, n_keys, 2, per_call)
    part = log.partition(topic, 0)
    pool = pa.default_memory_pool()
    arrow_before = pool.bytes_allocated()
    tracemalloc.start()
    try:
        res = compact_partition(part, force=True, buffer_bytes=buffer)
        _, py_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    arrow_peak = max(0, pool.max_memory() - arrow_before)
    assert res["records_removed"] == n_keys
    assert res["passes"] >= n_keys // (buffer // ENTRY_BYTES)
    df = read_all(log, topic)
    assert df.height == n_keys and set(df["value"].to_list()) == {b"1"}
    assert df["key"].n_unique() == n_keys
    del arrow_peak  # the Arrow pool's high-water mark is process-wide: not compared
    return py_peak


def _many_keys_to(log: Log, topic: str, n_keys: int, rounds: int, per_call: int) -> None:
    with log.producer(fsync="never") as p:
        for r in range(rounds):
            for a in range(0, n_keys, per_call):
                ks = [f"k{i}".encode() for i in range(a, min(n_keys, a + per_call))]
                p.send_batch(
                    topic,
                    pa.table({"key": pa.array(ks), "value": pa.array([f"{r}".encode()] * len(ks))}),
                    key="key",
                    value="value",
                    partition=0,
                )
    log.partition(topic, 0).roll()


def _bound(buffer: int) -> int:
    """What compaction may hold whatever the number of keys: the map (and a merge of
    it), plus a few read chunks of 1 MiB (a batch, a rewrite, the index scan)."""
    return 3 * buffer + (5 << 20)


def test_compaction_memory_does_not_grow_with_the_number_of_keys(log: Log) -> None:
    """Four times the keys, the same buffer: both stay under the same bound."""
    buffer = 1 << 20
    small = _peak_memory(log, "small", 40_000, buffer, per_call=5000)
    large = _peak_memory(log, "large", 160_000, buffer, per_call=5000)
    assert small < _bound(buffer) and large < _bound(buffer), (small, large)


@pytest.mark.slow
def test_compaction_of_a_million_keys_in_one_megabyte(log: Log) -> None:
    """Far below what holding every key would take (digests and offsets alone:
    28 MB; the key bytes and Polars' table of them were more before)."""
    peak = _peak_memory(log, "t", 1_000_000, 1 << 20, per_call=20_000)
    assert peak < _bound(1 << 20) < 1_000_000 * ENTRY_BYTES / 3, peak


def test_compaction_maps_only_what_is_new(log: Log) -> None:
    """Like Kafka's cleaner checkpoint: a second compaction maps only the segments
    closed since the first, and the share of dirty bytes decides whether it runs."""
    log.create_topic("t", compact=True, segment_bytes="4KiB", delete_retention="0ms")
    _send(log, "t", [(f"k{i % 7}", "v" * 40, 1) for i in range(300)])
    part = log.partition("t", 0)
    part.roll()
    first = compact_partition(part, now=10**12)  # everything is dirty: it runs
    assert first["records_removed"] == 300 - 7
    again = compact_partition(part, now=10**12)  # nothing new: the ratio says no
    assert again["records_removed"] == 0 and again["passes"] == 0
    _send(log, "t", [("k1", "new", 2)])
    part.roll()
    third = compact_partition(part, force=True, now=10**12)
    assert third["records_removed"] == 1
    got = {k: v for k, v in read_all(log, "t").select("key", "value").iter_rows()}
    assert got[b"k1"] == b"new" and len(got) == 7
