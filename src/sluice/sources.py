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
from sluice.connectors.sources.memory import IteratorSource, MemorySource, memory

__all__ = [
    "CsvSource",
    "FileSource",
    "GeneratorSource",
    "IteratorSource",
    "JsonlSource",
    "MemorySource",
    "ParquetSource",
    "csv",
    "files",
    "generator",
    "jsonl",
    "memory",
    "parquet",
    "synthetic",
]
