"""``Flow``: the container of a dataflow and the entry point to run it."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from sluice.connectors.base import OnError, Source
from sluice.connectors.sources.memory import memory
from sluice.errors import ConfigError
from sluice.operators.source import SourceSpec
from sluice.plan.logical import LogicalPlan, Node
from sluice.plan.physical import PhysicalPlan, build_physical
from sluice.runtime.checkpoint import CheckpointStorage, load_checkpoint
from sluice.runtime.local import CheckpointSettings, JobResult, LocalRuntime
from sluice.time.durations import Duration, parse_duration
from sluice.time.watermarks import WatermarkStrategy, bounded_out_of_orderness

if TYPE_CHECKING:
    from sluice.api.stream import Stream

log = logging.getLogger("sluice")


class Flow:
    """A dataflow: sources, transformations and sinks, run with :meth:`run`.

    >>> import sluice as sl
    >>> flow = sl.Flow("double")
    >>> out = sl.sinks.collect()
    >>> flow.source([{"x": 1}, {"x": 2}]).with_columns(y=sl.col("x") * 2).sink(out)
    >>> _ = flow.run()
    >>> out.to_polars()["y"].to_list()
    [2, 4]
    """

    def __init__(
        self,
        name: str = "flow",
        *,
        parallelism: int = 1,
        max_batch_rows: int = 65_536,
        linger: Duration = "1ms",
        state_backend: str = "memory",
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if parallelism < 1:
            raise ConfigError(f"Flow {name!r}: parallelism must be >= 1, got {parallelism}")
        if max_batch_rows < 1:
            raise ConfigError(f"Flow {name!r}: max_batch_rows must be >= 1")
        self.name = name
        self.parallelism = parallelism
        self.max_batch_rows = max_batch_rows
        self.linger_ms = parse_duration(linger, what="linger")
        if state_backend not in ("memory", "rocksdb"):
            raise ConfigError(
                f"Flow {name!r}: state_backend must be 'memory' or 'rocksdb', got {state_backend!r}"
            )
        self.state_backend = state_backend
        self.state_dir = None if state_dir is None else os.fspath(state_dir)
        self.plan = LogicalPlan(name)
        self._names: dict[str, int] = {}
        self._runtime: LocalRuntime | None = None

    # -- building ----------------------------------------------------------------------
    def _unique(self, base: str) -> str:
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}#{n}"

    def _add(self, node_kwargs: dict[str, Any]) -> Node:
        node = Node(id=self.plan.new_id(), **node_kwargs)
        return self.plan.add(node)

    def source(
        self,
        source: Source | pl.DataFrame | list[dict[str, Any]] | Any,
        *,
        time: str | pl.Expr | None = None,
        watermark: WatermarkStrategy | Duration | None = None,
        time_unit: str = "ms",
        time_format: str | None = None,
        schema: Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
        parallelism: int | None = None,
        name: str | None = None,
        max_batch_rows: int | None = None,
        linger: Duration | None = None,
    ) -> Stream:
        """Add a source and return its stream.

        Parameters
        ----------
        source
            A connector (``sl.sources.*``) or in-memory data (list of dicts,
            DataFrame, Arrow table, iterator).
        time
            Event-time column (or expression): Datetime, Date, ISO-8601 string or
            a number in ``time_unit`` since the epoch. ``None`` means the stream
            has processing time only.
        watermark
            A strategy (``sl.bounded_out_of_orderness("5s")``) or a duration
            (shorthand for bounded out-of-orderness). Default: 0 (monotonous).
        schema
            Column types to enforce; without it the first batch fixes the schema.
        on_error
            ``"raise"`` (default) stops with an error naming source, file and line;
            ``"dead_letter"`` routes bad records to ``stream.dead_letters()``.
        """
        from sluice.api.stream import Stream

        if not isinstance(source, Source):
            source = memory(source)
        if on_error not in ("raise", "dead_letter"):
            raise ConfigError(f"on_error must be 'raise' or 'dead_letter', got {on_error!r}")
        if time_unit not in ("ms", "s", "us", "ns"):
            raise ConfigError(f"time_unit must be one of ms, s, us, ns; got {time_unit!r}")
        if watermark is None:
            strategy = WatermarkStrategy()
        elif isinstance(watermark, WatermarkStrategy):
            strategy = watermark
        else:
            strategy = bounded_out_of_orderness(watermark)
        if watermark is not None and time is None:
            raise ConfigError(
                f"source {name or source.name!r}: a watermark needs an event-time column; pass time="
            )
        nm = self._unique(name or source.name)
        spec = SourceSpec(
            source=source,
            name=nm,
            time=time,
            time_unit=time_unit,
            time_format=time_format,
            watermark=strategy,
            schema=schema,
            on_error=on_error,
            max_batch_rows=max_batch_rows or self.max_batch_rows,
            linger_ms=self.linger_ms if linger is None else parse_duration(linger, what="linger"),
        )
        max_p = source.max_parallelism
        node = self._add(
            {
                "name": nm,
                "kind": "source",
                "source": spec,
                "parallelism": parallelism,
                "max_parallelism": max_p,
            }
        )
        return Stream(self, node, event_time=time is not None)

    # -- running -----------------------------------------------------------------------
    def physical_plan(self, parallelism: int | None = None) -> PhysicalPlan:
        """The plan that :meth:`run` executes (see ``PhysicalPlan.describe()``)."""
        return build_physical(self.plan, parallelism or self.parallelism)

    def run(
        self,
        *,
        parallelism: int | None = None,
        timeout: float | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_interval: Duration | None = "10s",
        keep_checkpoints: int = 3,
        from_savepoint: str | os.PathLike[str] | None = None,
        trust_checkpoint: bool = False,
    ) -> JobResult:
        """Run the flow in this process until its bounded inputs end, ``timeout``
        seconds pass, or Ctrl-C / :meth:`stop`. Sinks are flushed in every case.

        With ``checkpoint_dir`` the job takes a checkpoint every
        ``checkpoint_interval`` (and at the end, or when stopped), keeps the last
        ``keep_checkpoints``, and on the next run with the same directory resumes
        from the newest complete one; with replayable sources and exactly-once
        sinks (the file sinks) the output is exactly-once across crashes.
        ``from_savepoint`` starts from an explicit checkpoint or savepoint
        directory instead.

        Returns a :class:`JobResult` with per-operator metrics and checkpoints.
        """
        plan = self.physical_plan(parallelism)
        settings = None
        restore = None
        if keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {keep_checkpoints}")
        if checkpoint_dir is not None:
            interval = (
                None
                if checkpoint_interval is None
                else parse_duration(
                    checkpoint_interval, what="checkpoint interval", allow_zero=False
                )
            )
            storage = CheckpointStorage(checkpoint_dir)
            settings = CheckpointSettings(storage, interval, keep_checkpoints)
            if from_savepoint is None:
                restore = storage.latest()
        if from_savepoint is not None:
            restore = load_checkpoint(from_savepoint, trust=trust_checkpoint)
        runtime = LocalRuntime(
            plan,
            checkpointing=settings,
            restore=restore,
            config={"state_backend": self.state_backend, "state_dir": self.state_dir},
        )
        if settings is not None and runtime.guarantee != "exactly-once":
            log.warning(
                "flow %r checkpoints but is %s: %s",
                self.name,
                runtime.guarantee,
                "a source is not replayable"
                if runtime.guarantee == "at-most-once"
                else "a sink cannot take part in two-phase commit",
            )
        if restore is not None:
            log.info("flow %r resumes from checkpoint %s", self.name, restore.path)
        self._runtime = runtime
        handler_installed = False
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)

            def _on_term(signum: int, frame: Any) -> None:
                runtime.request_stop()

            signal.signal(signal.SIGTERM, _on_term)
            handler_installed = True
        try:
            return runtime.run(timeout=timeout)
        finally:
            if handler_installed:
                signal.signal(signal.SIGTERM, previous)
            self._runtime = None

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is executing right now."""
        return self._runtime is not None

    def savepoint(self, target: str | os.PathLike[str], *, timeout: float = 60.0) -> Path:
        """Take a savepoint of the running flow (call from another thread) and
        copy it to ``target``; resume from it with ``run(from_savepoint=target)``."""
        rt = self._runtime
        if rt is None:
            raise ConfigError(f"flow {self.name!r} is not running")
        return rt.request_savepoint(target).result(timeout=timeout)

    def stop(self) -> None:
        """Stop a running flow (from another thread); sinks are flushed."""
        if self._runtime is not None:
            self._runtime.request_stop()

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, nodes={len(self.plan.nodes)})"
