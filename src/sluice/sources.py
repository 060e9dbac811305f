"""Source connectors: ``sl.sources.memory(...)``, ``sl.sources.jsonl(...)``, ..."""

from sluice.connectors.sources.files import (
    CsvSource,
    FileSource,
    JsonlSource,
    ParquetSource,
    csv,
    files,
    jsonl,
    parquet,
)
from sluice.connectors.sources.generator import GeneratorSource, generator, synthetic
from sluice.connectors.sources.log import LogSource, log
from sluice.connectors.sources.memory import IteratorSource, MemorySource, memory
from sluice.nexmark.source import NexmarkSource, nexmark

__all__ = [
    "CsvSource",
    "FileSource",
    "GeneratorSource",
    "IteratorSource",
    "JsonlSource",
    "LogSource",
    "MemorySource",
    "NexmarkSource",
    "ParquetSource",
    "csv",
    "files",
    "generator",
    "jsonl",
    "log",
    "memory",
    "nexmark",
    "parquet",
    "synthetic",
]
