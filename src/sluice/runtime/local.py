"""The local runtime: every subtask of the job in one process, one event loop.

Sources are polled in turn; each batch is pushed synchronously through its
operator chain and across exchanges to downstream subtasks. Processing-time
timers fire between polls. When nothing is ready the loop sleeps briefly.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluice.errors import PlanError
from sluice.operators.base import (
    Clock,
    Metrics,
    Operator,
    OperatorContext,
    SnapshotSink,
    TimerService,
)
from sluice.operators.sink import SinkOperator
from sluice.operators.source import SourceOperator
from sluice.plan.physical import PhysicalNode, PhysicalPlan
from sluice.runtime import faults
from sluice.runtime.channels import ExchangeWriter, InputGate
from sluice.runtime.checkpoint import (
    CheckpointError,
    CheckpointStorage,
    LoadedCheckpoint,
    _Pending,
)
from sluice.runtime.messages import Barrier
from sluice.state.snapshot import Snapshot

log = logging.getLogger("sluice.runtime")


@dataclass
class JobResult:
    """What a finished (or stopped) run reports."""

    name: str
    elapsed_s: float
    stopped: bool
    metrics: dict[str, Metrics] = field(default_factory=dict)
    #: Ids of the checkpoints completed during the run (empty without checkpointing).
    checkpoints: list[int] = field(default_factory=list)
    #: The checkpoint the run resumed from, if any.
    restored_from: int | None = None
    #: Delivery guarantee of the run: "exactly-once", "at-least-once" or "none".
    guarantee: str = "none"

    def metric(self, operator: str, name: str) -> int:
        """One counter of an operator summed over its subtasks (0 if never counted)."""
        m = self.metrics[operator]
        return int(getattr(m, name)) if hasattr(m, name) else m.extra.get(name, 0)


@dataclass
class CheckpointSettings:
    """Checkpointing of one run: where, how often, how many to keep."""

    storage: CheckpointStorage
    interval_ms: int | None = None
    keep: int = 3


@dataclass
class _InFlight:
    """A checkpoint whose barriers went through; its files are being written."""

    checkpoint_id: int
    pending: _Pending
    writes: list[Future[None]]
    done: Future[None]
    started: float


class _Coordinator(SnapshotSink):
    """Takes checkpoints: injects barriers, hands each subtask's snapshot to a
    background writer, and completes the checkpoint (manifest, then sink
    commits) once every file is written. One checkpoint is in flight at a time
    (Flink's default ``maxConcurrentCheckpoints = 1``)."""

    def __init__(self, runtime: LocalRuntime, settings: CheckpointSettings) -> None:
        self.rt = runtime
        self.settings = settings
        self.pending: _Pending | None = None
        self.next_id = settings.storage.next_id()
        self.inflight: _InFlight | None = None
        self._writes: list[Future[None]] = []
        self._pool: ThreadPoolExecutor | None = None
        #: Per checkpoint: seconds the job was blocked (barriers and captures), and
        #: seconds from trigger to completion.
        self.blocked_s: list[float] = []
        self.duration_s: list[float] = []

    def _writer(self) -> ThreadPoolExecutor:
        # one thread: files are written in order, and the manifest after them
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="sluice-checkpoint")
        return self._pool

    def ack(self, checkpoint_id: int, op: Operator, snapshot: Snapshot) -> None:
        p = self.pending
        if p is None or p.checkpoint_id != checkpoint_id:
            snapshot.discard()
            raise CheckpointError(f"unexpected barrier {checkpoint_id} at {op.name!r}")
        assert op.ctx is not None
        job = self.settings.storage.ack_subtask(
            p, op.ctx.name, op.ctx.subtask, op.ctx.parallelism, snapshot
        )
        self._writes.append(self._writer().submit(job))

    def trigger(self, *, final: bool = False, savepoint: bool = False) -> int | None:
        """Start a checkpoint: barriers from every live source, direct snapshots
        of finished subtasks. Returns its id, or None while another is in flight;
        :meth:`poll` completes it."""
        if self.inflight is not None:
            return None
        t0 = time.perf_counter()
        cid = self.next_id
        self.next_id += 1
        storage = self.settings.storage
        self.pending = p = storage.begin(cid, savepoint=savepoint)
        writes: list[Future[None]] = []
        self._writes = writes
        try:
            for op in self.rt.all_ops:
                if op.finished or (isinstance(op, SourceOperator) and op.ended):
                    self.ack(cid, op, op.checkpoint_snapshot(cid))
            for src in self.rt.sources:
                if not src.ended:
                    src.inject_barrier(Barrier(cid))
            missing = len(self.rt.all_ops) - len(p.acked)
            if missing:
                raise CheckpointError(
                    f"checkpoint {cid}: {missing} operator subtasks did not acknowledge"
                )
        except BaseException:
            self._drain(writes)
            storage.abort(p)
            raise
        finally:
            self.pending = None
            self._writes = []
        job = self.rt.plan.name

        def complete() -> None:
            for w in writes:
                w.result()  # the writer's first error fails the checkpoint
            storage.finish(p, job, finished=final)

        done = self._writer().submit(complete)
        self.inflight = _InFlight(cid, p, writes, done, t0)
        self.blocked_s.append(time.perf_counter() - t0)
        return cid

    def poll(self, *, wait: bool = False) -> int | None:
        """Complete the checkpoint in flight if its files and manifest are
        written (or, with ``wait``, once they are): commit the sinks, prune old
        checkpoints. Returns the completed id; raises if the checkpoint failed."""
        f = self.inflight
        if f is None or (not wait and not f.done.done()):
            return None
        self.inflight = None
        try:
            f.done.result()
        except BaseException as e:
            self._drain(f.writes)
            self.settings.storage.abort(f.pending)
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(
                f"checkpoint {f.checkpoint_id} failed while writing its files: "
                f"{type(e).__name__}: {e}"
            ) from e
        self.duration_s.append(time.perf_counter() - f.started)
        for sk in self.rt.sinks:
            faults.point("commit")
            sk.commit(f.checkpoint_id)
        self.settings.storage.retain(self.settings.keep)
        return f.checkpoint_id

    def checkpoint(self, *, final: bool = False, savepoint: bool = False) -> int:
        """Take a checkpoint and wait until it is complete and the sinks committed
        (the one in flight, if any, completes first)."""
        self.rt._completed(self.poll(wait=True))
        cid = self.trigger(final=final, savepoint=savepoint)
        assert cid is not None
        self.poll(wait=True)
        return cid

    @staticmethod
    def _drain(writes: list[Future[None]]) -> None:
        for w in writes:
            w.cancel()
        for w in writes:
            if not w.cancelled():
                w.exception()  # wait; the checkpoint is aborted anyway

    def close(self) -> None:
        """Abandon the checkpoint in flight (a failed or stopped run) and stop the writer."""
        f, self.inflight = self.inflight, None
        if f is not None:
            self._drain([*f.writes, f.done])
            self.settings.storage.abort(f.pending)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class LocalRuntime:
    """Runs a :class:`PhysicalPlan` in this process."""

    def __init__(
        self,
        plan: PhysicalPlan,
        clock: Clock | None = None,
        *,
        checkpointing: CheckpointSettings | None = None,
        restore: LoadedCheckpoint | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.plan = plan
        self.config = dict(config or {})
        self.timers = TimerService(clock or Clock())
        self.instances: dict[int, list[Operator]] = {}
        self.metrics: dict[int, list[Metrics]] = {}
        self.sources: list[SourceOperator] = []
        self.sinks: list[SinkOperator] = []
        self.all_ops: list[Operator] = []
        self._stop_requested = False
        self._savepoint_requests: queue.SimpleQueue[tuple[Path, Future[Path]]] = queue.SimpleQueue()
        self.checkpointing = checkpointing
        self.coordinator = _Coordinator(self, checkpointing) if checkpointing else None
        self.restore = restore
        self.completed: list[int] = []
        if restore is not None:
            self._check_restore(restore)
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
            writer = node.sink.create_writer(i, pn.parallelism)
            writer.transactional = self.checkpointing is not None and node.sink.exactly_once
            op = SinkOperator(node.name, writer)
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
            if pn.node.kind == "sink" and self.restore is not None and self.restore.has(pn.name):
                assert pn.node.sink is not None
                snap = self.restore.snapshot_for(pn.name, 0, 1)
                txns = [part["txn"] for part in snap.meta["parts"] if part.get("txn")]
                pn.node.sink.recover(txns)
            ops = [self._make(pn, i, splits) for i in range(pn.parallelism)]
            ms = [Metrics() for _ in ops]
            for i, op in enumerate(ops):
                op.open(
                    OperatorContext(
                        pn.name,
                        i,
                        pn.parallelism,
                        self.timers,
                        ms[i],
                        config=self.config,
                        checkpoints=self.coordinator,
                    )
                )
                if (
                    self.restore is not None
                    and self.restore.has(pn.name)
                    and pn.node.kind != "sink"
                ):
                    op.restore_state(self.restore.snapshot_for(pn.name, i, pn.parallelism))
            if pn.node.kind == "source" and self.restore is not None and self.restore.has(pn.name):
                self._check_splits(pn.name, [r.split_id for r in splits])
            self.all_ops.extend(ops)
            self.instances[pn.node.id] = ops
            self.metrics[pn.node.id] = ms
            for side, pe in enumerate(pn.inputs):
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
                            ExchangeWriter("forward", (), [(g, g.add_channel(side))], ui)
                        )
                else:
                    for ui, u in enumerate(ups):
                        tg = []
                        for di in range(len(ops)):
                            g = gates[(pn.node.id, di)]
                            tg.append((g, g.add_channel(side)))
                        _targets(u, tag).append(ExchangeWriter(pe.exchange, pe.edge.keys, tg, ui))
        if not self.sinks:
            raise PlanError("the job has no sink")

    def _check_restore(self, restore: LoadedCheckpoint) -> None:
        names = {pn.name for pn in self.plan.nodes}
        unknown = [n for n in restore.node_names() if n not in names]
        if unknown:
            raise CheckpointError(
                f"checkpoint {restore.path} holds state of operators {unknown} that this flow "
                f"does not have (operators: {sorted(names)}); was the program changed?"
            )

    def _check_splits(self, node: str, current: list[str]) -> None:
        assert self.restore is not None
        saved: set[str] = set()
        for part in self.restore.snapshot_for(node, 0, 1).meta["parts"]:
            saved.update(part.get("splits", {}))
        lost = sorted(saved - set(current))
        if lost:
            raise CheckpointError(
                f"source {node!r}: the checkpoint has positions for splits {lost[:5]} that the "
                "source no longer has (input files removed, or an in-memory source restored "
                "at another parallelism)"
            )

    @property
    def guarantee(self) -> str:
        if self.checkpointing is None:
            return "none"
        # `is not None`: a sink may define __len__ (collect) and be falsy
        replayable = all(
            pn.node.source.source.replayable for pn in self.plan.nodes if pn.node.source is not None
        )
        eo_sinks = all(
            pn.node.sink.exactly_once for pn in self.plan.nodes if pn.node.sink is not None
        )
        if replayable and eo_sinks:
            return "exactly-once"
        return "at-least-once" if replayable else "at-most-once"

    def checkpoint(self, *, final: bool = False, savepoint: bool = False) -> int:
        """Take a checkpoint now (between polls, so no batch is half processed)."""
        if self.coordinator is None:
            raise CheckpointError("this run has no checkpoint directory")
        cid = self.coordinator.checkpoint(final=final, savepoint=savepoint)
        self.completed.append(cid)
        return cid

    def _completed(self, cid: int | None) -> None:
        if cid is not None:
            self.completed.append(cid)

    def request_savepoint(self, target: str | os.PathLike[str]) -> Future[Path]:
        """Ask the running job for a savepoint copied to ``target`` (thread-safe);
        the future resolves to the savepoint's path."""
        if self.coordinator is None:
            raise CheckpointError("savepoints need a checkpoint directory (checkpoint_dir=...)")
        fut: Future[Path] = Future()
        self._savepoint_requests.put((Path(target), fut))
        return fut

    def _serve_savepoints(self) -> None:
        assert self.checkpointing is not None
        for target, fut in self._file_savepoint_requests():
            self._savepoint_requests.put((target, fut))
        while not self._savepoint_requests.empty():
            target, fut = self._savepoint_requests.get()
            try:
                cid = self.checkpoint(savepoint=True)
                src = self.checkpointing.storage.dir / f"chk-{cid:06d}"
                if target.exists():
                    raise CheckpointError(f"savepoint target {target} already exists")
                shutil.copytree(src, target)
                fut.set_result(target)
            except BaseException as e:
                fut.set_exception(e)

    def _file_savepoint_requests(self) -> list[tuple[Path, Future[Path]]]:
        """Requests from ``sluice savepoint`` in another process: a request file in
        the checkpoint directory, answered by a ``.done``/``.failed`` file."""
        assert self.checkpointing is not None
        out: list[tuple[Path, Future[Path]]] = []
        for req in self.checkpointing.storage.dir.glob("_savepoint-*.request"):
            try:
                target = Path(json.loads(req.read_text())["target"])
            except (OSError, ValueError, KeyError):
                continue
            req.unlink(missing_ok=True)
            fut: Future[Path] = Future()

            def answer(f: Future[Path], req: Path = req) -> None:
                e = f.exception()
                body = {"error": str(e)} if e else {"path": str(f.result())}
                suffix = ".failed" if e else ".done"
                req.with_suffix(suffix).write_text(json.dumps(body))

            fut.add_done_callback(answer)
            out.append((target, fut))
        return out

    # -- execution ---------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to stop at the next turn (thread-safe)."""
        self._stop_requested = True

    def run(self, timeout: float | None = None) -> JobResult:
        start = time.perf_counter()
        restored = self.restore.checkpoint_id if self.restore is not None else None
        if self.restore is not None and self.restore.finished:
            log.info("job %r already finished at checkpoint %s", self.plan.name, restored)
            self._close_sinks()
            return JobResult(
                self.plan.name, 0.0, False, self._metrics(), [], restored, self.guarantee
            )
        deadline = None if timeout is None else start + timeout
        stopped = False
        sources = self.sources
        sinks = self.sinks
        timers = self.timers
        discover_every = 0.5
        next_discovery = start + discover_every
        cp = self.checkpointing
        every = None if cp is None or not cp.interval_ms else cp.interval_ms / 1000
        next_checkpoint = start + every if every else None
        for s in sources:
            s.emit_restored_watermark()
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
                    if self.checkpointing is not None:
                        self._serve_savepoints()
                if self.coordinator is not None and self.coordinator.inflight is not None:
                    self._completed(self.coordinator.poll())
                if next_checkpoint is not None and now >= next_checkpoint and every:
                    assert self.coordinator is not None
                    # asynchronous: the files are written while the job goes on
                    if self.coordinator.trigger() is not None:
                        next_checkpoint = time.perf_counter() + every
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
        except BaseException:
            # a failed job: release files, threads and state directories; no
            # final checkpoint (the next run resumes from the last good one)
            self._shutdown()
            raise
        if self.checkpointing is not None:
            # a final checkpoint: commits the sinks (end of input, or a clean stop
            # from which the next run resumes)
            try:
                self.checkpoint(final=not stopped)
            except BaseException:
                self._shutdown()
                raise
        if stopped or not all(s.ended for s in sinks):
            self._shutdown()
        else:
            if self.coordinator is not None:
                self.coordinator.close()
            self._close_sinks()
        return JobResult(
            self.plan.name,
            time.perf_counter() - start,
            stopped,
            self._metrics(),
            list(self.completed),
            restored,
            self.guarantee,
        )

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
        if self.coordinator is not None:
            self.coordinator.close()
        for s in self.sources:
            s.stop()
        for ops in self.instances.values():
            for op in ops:
                if not isinstance(op, SinkOperator | SourceOperator):
                    op.close()
        self._close_sinks()

    def _close_sinks(self) -> None:
        for sk in self.sinks:
            sk.close()
            sk.close_writer()

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
