"""Channels between subtasks: input gates (watermark alignment) and exchanges.

In the local runtime a channel is a direct call; a distributed runtime replaces
the exchange writers and gates with remote sends without touching operators.
"""

from __future__ import annotations

import itertools

import polars as pl

from sluice.operators.base import Operator, Target
from sluice.plan.logical import ExchangeKind
from sluice.plan.partitioning import partition
from sluice.runtime.messages import MIN_TIME


class InputGate:
    """The channels into one subtask's head operator.

    The head's watermark is the minimum over channels that are neither idle nor
    ended; it only moves forward. When every channel is idle the subtask is idle.
    """

    def __init__(self, head: Operator) -> None:
        self.head = head
        self.wm: list[int] = []
        self.idle: list[bool] = []
        self.ended: list[bool] = []
        self.current = MIN_TIME
        self._idle_sent = False

    def add_channel(self) -> int:
        self.wm.append(MIN_TIME)
        self.idle.append(False)
        self.ended.append(False)
        return len(self.wm) - 1

    def receive_batch(self, ch: int, batch: pl.DataFrame) -> None:
        self.head.push_batch(batch)

    def receive_watermark(self, ch: int, time: int) -> None:
        if time > self.wm[ch]:
            self.wm[ch] = time
        self._advance()

    def receive_idle(self, ch: int, idle: bool) -> None:
        self.idle[ch] = idle
        self._advance()

    def receive_end(self, ch: int) -> None:
        self.ended[ch] = True
        if all(self.ended):
            self.head.push_end()
        else:
            self._advance()

    def _advance(self) -> None:
        live = [
            w for w, i, e in zip(self.wm, self.idle, self.ended, strict=True) if not i and not e
        ]
        if not live:
            if not all(self.ended) and not self._idle_sent:
                self._idle_sent = True
                self.head.push_idle(True)
            return
        if self._idle_sent:
            self._idle_sent = False
            self.head.push_idle(False)
        wm = min(live)
        if wm > self.current:
            self.current = wm
            self.head.push_watermark(wm)


class ExchangeWriter(Target):
    """Routes one upstream subtask's output to the downstream subtasks' gates."""

    def __init__(
        self,
        kind: ExchangeKind,
        keys: tuple[str, ...],
        targets: list[tuple[InputGate, int]],
        upstream_index: int,
    ) -> None:
        self.kind = kind
        self.keys = keys
        self.targets = targets
        self.n = len(targets)
        self._rr = itertools.cycle(range(self.n)) if self.n else None
        if kind == "rebalance":
            # start at a different target per upstream subtask to spread load
            for _ in range(upstream_index % max(self.n, 1)):
                next(self._rr)  # type: ignore[arg-type]

    def push_batch(self, batch: pl.DataFrame) -> None:
        if self.kind == "forward" or self.n == 1:
            g, c = self.targets[0]
            g.receive_batch(c, batch)
        elif self.kind == "hash":
            for t, part in partition(batch, self.keys, self.n).items():
                g, c = self.targets[t]
                g.receive_batch(c, part)
        elif self.kind == "broadcast":
            for g, c in self.targets:
                g.receive_batch(c, batch)
        else:  # rebalance
            g, c = self.targets[next(self._rr)]  # type: ignore[arg-type]
            g.receive_batch(c, batch)

    def push_watermark(self, time: int) -> None:
        for g, c in self.targets:
            g.receive_watermark(c, time)

    def push_idle(self, idle: bool) -> None:
        for g, c in self.targets:
            g.receive_idle(c, idle)

    def push_end(self) -> None:
        for g, c in self.targets:
            g.receive_end(c)
