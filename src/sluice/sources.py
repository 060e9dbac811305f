"""Source connectors: ``sl.sources.memory(...)``, ``sl.sources.jsonl(...)``, ..."""

from sluice.connectors.sources.memory import IteratorSource, MemorySource, memory

__all__ = ["IteratorSource", "MemorySource", "memory"]
