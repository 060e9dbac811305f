"""The local runtime: every subtask of the job in one process, one event loop.

Sources are polled in turn; each batch is pushed synchronously through its
operator chain and across exchanges to downstream subtasks. Processing-time
timers fire between polls. When nothing is ready the loop sleeps briefly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sluice.errors import PlanError
from sluice.operators.base import Clock, Metrics, Operator, OperatorContext, TimerService
from sluice.operators.sink import SinkOperator
from sluice.operators.source import SourceOperator
from sluice.plan.physical import PhysicalNode, PhysicalPlan
from sluice.runtime.channels import ExchangeWriter, InputGate


@dataclass
class JobResult:
    """What a finished (or stopped) run reports."""

    name: str
    elapsed_s: float
    stopped: bool
    metrics: dict[str, Metrics] = field(default_factory=dict)

    def metric(self, operator: str, name: str) -> int:
        """One counter of an operator summed over its subtasks (0 if never counted)."""
        m = self.metrics[operator]
        return int(getattr(m, name)) if hasattr(m, name) else m.extra.get(name, 0)


class LocalRuntime:
    """Runs a :class:`PhysicalPlan` in this process."""

    def __init__(self, plan: PhysicalPlan, clock: Clock | None = None) -> None:
        self.plan = plan
        self.timers = TimerService(clock or Clock())
        self.instances: dict[int, list[Operator]] = {}
        self.metrics: dict[int, list[Metrics]] = {}
        self.sources: list[SourceOperator] = []
        self.sinks: list[SinkOperator] = []
        self._stop_requested = False
        self._build()

    # -- construction ----------------------------------------------------------------
    def _make(self, pn: PhysicalNode, i: int, splits: list) -> Operator:
        node = pn.node
        if node.kind == "source":
            assert node.source is not None
            op: Operator = SourceOperator(node.source, splits[i :: pn.parallelism])
            self.sources.append(op)  # type: ignore[arg-type]
        elif node.kind == "sink":
            assert node.sink is not None
            op = SinkOperator(node.name, node.sink.create_writer(i, pn.parallelism))
            self.sinks.append(op)  # type: ignore[arg-type]
        else:
            assert node.factory is not None
            op = node.factory(i, pn.parallelism)
        return op

    def _build(self) -> None:
        gates: dict[tuple[int, int], InputGate] = {}
        for pn in self.plan.nodes:
            splits: list = []
            if pn.node.kind == "source":
                assert pn.node.source is not None
                splits = pn.node.source.source.create_splits(pn.parallelism)
            ops = [self._make(pn, i, splits) for i in range(pn.parallelism)]
            ms = [Metrics() for _ in ops]
            for i, op in enumerate(ops):
                op.open(OperatorContext(pn.name, i, pn.parallelism, self.timers, ms[i]))
            self.instances[pn.node.id] = ops
            self.metrics[pn.node.id] = ms
            for pe in pn.inputs:
                ups = self.instances[pe.src.node.id]
                tag = pe.edge.tag
                if pe.chained:
                    for u, d in zip(ups, ops, strict=True):
                        _targets(u, tag).append(d)
                    continue
                for di, d in enumerate(ops):
                    if (pn.node.id, di) not in gates:
                        gates[(pn.node.id, di)] = InputGate(d)
                if pe.exchange == "forward":
                    for ui, u in enumerate(ups):
                        g = gates[(pn.node.id, ui)]
                        _targets(u, tag).append(
                            ExchangeWriter("forward", (), [(g, g.add_channel())], ui)
                        )
                else:
                    for ui, u in enumerate(ups):
                        tg = []
                        for di in range(len(ops)):
                            g = gates[(pn.node.id, di)]
                            tg.append((g, g.add_channel()))
                        _targets(u, tag).append(ExchangeWriter(pe.exchange, pe.edge.keys, tg, ui))
        if not self.sinks:
            raise PlanError("the job has no sink")

    # -- execution ---------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to stop at the next turn (thread-safe)."""
        self._stop_requested = True

    def run(self, timeout: float | None = None) -> JobResult:
        start = time.perf_counter()
        deadline = None if timeout is None else start + timeout
        stopped = False
        sources = self.sources
        sinks = self.sinks
        timers = self.timers
        discover_every = 0.5
        next_discovery = start + discover_every
        try:
            while not all(s.ended for s in sinks):
                progressed = False
                for s in sources:
                    if s.poll():
                        progressed = True
                if timers.fire_due():
                    progressed = True
                now = time.perf_counter()
                if now >= next_discovery:
                    next_discovery = now + discover_every
                    self._discover()
                if self._stop_requested or (deadline is not None and now >= deadline):
                    stopped = True
                    break
                if not progressed:
                    nt = timers.next_time()
                    wait = 0.0005
                    if nt is not None:
                        wait = min(wait, max(0.0, (nt - timers.clock.now()) / 1000))
                    time.sleep(wait)
        except KeyboardInterrupt:
            stopped = True
        finally:
            if stopped or not all(s.ended for s in sinks):
                self._shutdown()
        return JobResult(self.plan.name, time.perf_counter() - start, stopped, self._metrics())

    def _discover(self) -> None:
        for pn in self.plan.nodes:
            if pn.node.kind != "source":
                continue
            assert pn.node.source is not None
            src = pn.node.source.source
            if src.bounded:
                continue
            new = src.discover_splits()
            ops = self.instances[pn.node.id]
            for k, r in enumerate(new):
                ops[k % len(ops)].add_splits([r])  # type: ignore[attr-defined]

    def _shutdown(self) -> None:
        """Stop without end-of-input semantics: close sources, flush and close sinks."""
        for s in self.sources:
            s.stop()
        for ops in self.instances.values():
            for op in ops:
                if not isinstance(op, SinkOperator | SourceOperator):
                    op.close()
        for sk in self.sinks:
            sk.close()

    def _metrics(self) -> dict[str, Metrics]:
        out: dict[str, Metrics] = {}
        for pn in self.plan.nodes:
            total = Metrics()
            for m in self.metrics[pn.node.id]:
                total.records_in += m.records_in
                total.records_out += m.records_out
                total.batches_in += m.batches_in
                total.late_dropped += m.late_dropped
                for k, v in m.extra.items():
                    total.add(k, v)
            out[pn.name] = total
        return out


def _targets(op: Operator, tag: str) -> list:
    if tag == "main":
        return op.output.main
    return op.output.side.setdefault(tag, [])
