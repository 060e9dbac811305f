"""Sink connectors: ``sl.sinks.collect()``, ``sl.sinks.parquet("out/")``, ..."""

from sluice.connectors.sinks.collect import CollectSink, collect

__all__ = ["CollectSink", "collect"]
