"""Sluice: stream processing for Python.

>>> import sluice as sl
>>> flow = sl.Flow("hello")
>>> out = sl.sinks.collect()
>>> flow.source([{"user": "a", "ts": 1000, "n": 1}, {"user": "a", "ts": 1500, "n": 2}],
...             time="ts").key_by("user").window(sl.windows.tumbling("1s")).agg(
...     total=sl.agg.sum("n")).sink(out)
>>> _ = flow.run()
>>> out.to_polars().select("user", "total").rows()
[('a', 3)]
"""

from polars import col, lit

from sluice import agg, sinks, sources
from sluice.api.flow import Flow
from sluice.api.stream import KeyedStream, Stream, WindowedStream, WindowResult
from sluice.api.upsert import materialize
from sluice.errors import BadRecordError, ConfigError, JobError, PlanError, SluiceError
from sluice.operators.process import KeyedProcessFunction, ProcessContext
from sluice.runtime.local import JobResult
from sluice.time.durations import parse_duration
from sluice.time.watermarks import WatermarkStrategy, bounded_out_of_orderness, monotonous
from sluice.time.windows import triggers, windows

__version__ = "0.1.0"

__all__ = [
    "BadRecordError",
    "ConfigError",
    "Flow",
    "JobError",
    "JobResult",
    "KeyedProcessFunction",
    "KeyedStream",
    "PlanError",
    "ProcessContext",
    "SluiceError",
    "Stream",
    "WatermarkStrategy",
    "WindowResult",
    "WindowedStream",
    "agg",
    "bounded_out_of_orderness",
    "col",
    "lit",
    "materialize",
    "monotonous",
    "parse_duration",
    "sinks",
    "sources",
    "triggers",
    "windows",
]
