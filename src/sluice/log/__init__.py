"""The embedded partitioned log: Kafka's concepts in a directory on local disk.

``sluice.log`` is an append-only, partitioned, durable log. Topics have
partitions; a partition is a sequence of segment files of checksummed,
optionally compressed record batches with offset and time indexes. Producers
append records (one by one or as whole DataFrames) under a per-partition
writer lock; consumers read by offset or timestamp, alone or in consumer
groups with durably committed offsets; retention deletes old segments,
compaction keeps the latest value per key, and closed segments can be archived
to Parquet. See ``docs/log.md`` for a guide.

>>> import tempfile
>>> from sluice.log import Log
>>> log = Log(tempfile.mkdtemp())
>>> log.create_topic("events", partitions=2)
>>> with log.producer() as p:
...     p.send("events", {"n": 1}, key="a").offset
0
>>> with log.consumer("events", from_="earliest") as c:
...     [r.json() for r in c.poll(timeout=1.0)]
[{'n': 1}]
"""

from sluice.log.config import TopicConfig
from sluice.log.consumer import Consumer, Record
from sluice.log.errors import (
    CorruptRecordError,
    InvalidRecordError,
    LogError,
    LogFullError,
    OffsetOutOfRangeError,
    PartitionNotFoundError,
    RecordTooLargeError,
    SchemaMismatchError,
    TopicExistsError,
    TopicNotFoundError,
)
from sluice.log.partitioner import murmur2, partition_for
from sluice.log.producer import BatchMetadata, Producer, RecordMetadata
from sluice.log.producer_state import ProducerStateUnknownError
from sluice.log.topic import Log, resolve_data_dir

__all__ = [
    "BatchMetadata",
    "Consumer",
    "CorruptRecordError",
    "InvalidRecordError",
    "Log",
    "LogError",
    "LogFullError",
    "OffsetOutOfRangeError",
    "PartitionNotFoundError",
    "Producer",
    "ProducerStateUnknownError",
    "Record",
    "RecordMetadata",
    "RecordTooLargeError",
    "SchemaMismatchError",
    "TopicConfig",
    "TopicExistsError",
    "TopicNotFoundError",
    "murmur2",
    "partition_for",
    "resolve_data_dir",
]
