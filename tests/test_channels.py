"""Input gates: watermark min-combination, idleness, barrier alignment."""

from __future__ import annotations

import polars as pl

from sluice.operators.base import Operator
from sluice.runtime.channels import InputGate
from sluice.runtime.messages import Barrier


class Recorder(Operator):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, object]] = []

    def process_batch(self, batch: pl.DataFrame) -> None:  # pragma: no cover - unused
        pass

    def push_batch(self, batch: pl.DataFrame) -> None:
        self.events.append(("batch", batch["x"].to_list()))

    def push_watermark(self, time: int) -> None:
        self.events.append(("wm", time))

    def push_idle(self, idle: bool) -> None:
        self.events.append(("idle", idle))

    def push_barrier(self, barrier: Barrier) -> None:
        self.events.append(("barrier", barrier.checkpoint_id))


def _gate(n: int) -> tuple[InputGate, Recorder]:
    head = Recorder()
    g = InputGate(head)
    for _ in range(n):
        g.add_channel()
    return g, head


def test_watermark_is_the_minimum_of_live_channels_and_never_goes_back():
    g, head = _gate(2)
    g.receive_watermark(0, 100)
    g.receive_watermark(1, 50)
    g.receive_watermark(1, 200)
    g.receive_idle(0, True)  # channel 1 alone: 200
    g.receive_idle(0, False)  # channel 0 back at 100: no regression
    assert [e for e in head.events if e[0] == "wm"] == [("wm", 50), ("wm", 100), ("wm", 200)]


def test_when_the_last_live_channel_goes_idle_its_watermark_is_flushed():
    g, head = _gate(2)
    g.receive_watermark(0, 100)  # channel 1 holds the minimum back
    g.receive_idle(0, True)
    g.receive_idle(1, True)  # both idle in turn
    assert ("wm", 100) in head.events and head.events[-1] == ("idle", True)


def test_barrier_alignment_holds_back_a_channel_until_all_delivered():
    g, head = _gate(2)
    g.receive_barrier(0, Barrier(7))
    g.receive_batch(0, pl.DataFrame({"x": [1]}))  # after the barrier: held
    g.receive_batch(1, pl.DataFrame({"x": [2]}))  # before its barrier: passes
    assert head.events == [("batch", [2])]
    g.receive_barrier(1, Barrier(7))
    assert head.events == [("batch", [2]), ("barrier", 7), ("batch", [1])]


def test_an_ended_channel_owes_no_barrier():
    g, head = _gate(2)
    g.receive_barrier(0, Barrier(3))
    g.receive_end(1)
    assert ("barrier", 3) in head.events
