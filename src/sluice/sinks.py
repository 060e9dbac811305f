"""Sink connectors: ``sl.sinks.collect()``, ``sl.sinks.parquet("out/")``, ..."""

from sluice.connectors.sinks.callback import CallbackSink, callback
from sluice.connectors.sinks.collect import CollectSink, collect
from sluice.connectors.sinks.discard import DiscardSink, discard
from sluice.connectors.sinks.files import (
    CsvSink,
    FileSink,
    JsonlSink,
    ParquetSink,
    csv,
    jsonl,
    parquet,
)
from sluice.connectors.sinks.log import LogSink, log
from sluice.connectors.sinks.stdout import StdoutSink, stdout

__all__ = [
    "CallbackSink",
    "CollectSink",
    "CsvSink",
    "DiscardSink",
    "FileSink",
    "JsonlSink",
    "LogSink",
    "ParquetSink",
    "StdoutSink",
    "callback",
    "collect",
    "csv",
    "discard",
    "jsonl",
    "log",
    "parquet",
    "stdout",
]
