"""Channels between subtasks: input gates (watermark alignment) and exchanges.

In the local runtime a channel is a direct call; a distributed runtime replaces
the exchange writers and gates with remote sends without touching operators.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

import polars as pl

from sluice.operators.base import Operator, Target, TwoInputOperator
from sluice.plan.logical import ExchangeKind
from sluice.plan.partitioning import partition
from sluice.runtime.messages import MIN_TIME, Barrier


class InputGate:
    """The channels into one subtask's head operator.

    The head's watermark is the minimum over channels that are neither idle nor
    ended; it only moves forward. When every channel is idle the subtask is idle.

    Checkpoint barriers are aligned: once a channel delivered barrier *n*, what
    it sends next is held back until every other live channel delivered *n* too;
    then the head snapshots (the barrier passes on) and the held messages flow.
    """

    def __init__(self, head: Operator) -> None:
        self.head = head
        self.wm: list[int] = []
        self.idle: list[bool] = []
        self.ended: list[bool] = []
        self.current = MIN_TIME
        self._idle_sent = False
        self._aligning: Barrier | None = None
        self._arrived: set[int] = set()
        self._held: deque[tuple[int, str, Any]] = deque()
        #: input index (side) of each channel, for two-input heads (joins)
        self.side: list[int] = []
        self._two = head if isinstance(head, TwoInputOperator) else None

    def _blocked(self, ch: int, kind: str, payload: Any) -> bool:
        if self._aligning is not None and ch in self._arrived:
            self._held.append((ch, kind, payload))
            return True
        return False

    def receive_barrier(self, ch: int, barrier: Barrier) -> None:
        if self._blocked(ch, "barrier", barrier):
            return
        if self._aligning is None:
            self._aligning = barrier
            self._arrived = set()
        self._arrived.add(ch)
        self._maybe_aligned()

    def _maybe_aligned(self) -> None:
        b = self._aligning
        if b is None:
            return
        if any(not e and c not in self._arrived for c, e in enumerate(self.ended)):
            return
        self._aligning = None
        self._arrived = set()
        self.head.push_barrier(b)
        held, self._held = self._held, deque()
        while held:
            ch, kind, payload = held.popleft()
            if self._aligning is not None and ch in self._arrived:
                self._held.append((ch, kind, payload))
                continue
            getattr(self, "receive_" + kind)(ch, *(() if kind == "end" else (payload,)))

    def add_channel(self, side: int = 0) -> int:
        self.side.append(side)
        self.wm.append(MIN_TIME)
        self.idle.append(False)
        self.ended.append(False)
        return len(self.wm) - 1

    def receive_batch(self, ch: int, batch: pl.DataFrame) -> None:
        if self._aligning is not None and self._blocked(ch, "batch", batch):
            return
        if self._two is not None:
            self._two.push_side(self.side[ch], batch)
        else:
            self.head.push_batch(batch)

    def receive_watermark(self, ch: int, time: int) -> None:
        if self._aligning is not None and self._blocked(ch, "watermark", time):
            return
        if time > self.wm[ch]:
            self.wm[ch] = time
        self._advance()

    def receive_idle(self, ch: int, idle: bool) -> None:
        if self._aligning is not None and self._blocked(ch, "idle", idle):
            return
        self.idle[ch] = idle
        self._advance()

    def receive_end(self, ch: int) -> None:
        if self._aligning is not None and self._blocked(ch, "end", None):
            return
        self.ended[ch] = True
        if self._aligning is not None:
            self._maybe_aligned()  # an ended channel owes no barrier
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
                # as Flink's StatusWatermarkValve: when the last live channel goes
                # idle, flush the largest watermark before going idle, so what
                # that channel's watermark allowed does fire
                mx = max(w for w, e in zip(self.wm, self.ended, strict=True) if not e)
                if mx > self.current:
                    self.current = mx
                    self.head.push_watermark(mx)
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

    def push_barrier(self, barrier: Barrier) -> None:
        for g, c in self.targets:
            g.receive_barrier(c, barrier)
