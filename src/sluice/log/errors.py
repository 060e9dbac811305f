"""Errors of the embedded log. Each names the topic, partition, segment or offset
concerned and, where there is one, the fix."""

from __future__ import annotations

from sluice.errors import ConfigError, SluiceError


class LogError(SluiceError):
    """Base class of the errors raised by :mod:`sluice.log`."""


class TopicNotFoundError(LogError, KeyError):
    """The topic does not exist in this data directory."""

    def __init__(self, topic: str, data_dir: str) -> None:
        self.topic = topic
        super().__init__(
            f"topic {topic!r} does not exist in {data_dir} "
            f"(create it with `sluice topic create {topic}` or Log.create_topic)"
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TopicExistsError(LogError):
    """``create_topic`` was called for a topic that already exists."""


class PartitionNotFoundError(LogError, ConfigError):
    """A partition number outside ``0 .. partitions - 1``."""


class RecordTooLargeError(LogError, ConfigError):
    """A record is larger than the topic's ``max_record_bytes``."""


class SchemaMismatchError(LogError, ConfigError):
    """A record's value does not match the topic's declared schema."""


class InvalidRecordError(LogError, ConfigError):
    """A record cannot go into the topic (a null key in a compacted topic, ...)."""


class CorruptRecordError(LogError):
    """A batch failed its checksum or is malformed; the message names segment and offset."""

    def __init__(self, segment: str, offset: int, reason: str) -> None:
        self.segment = segment
        self.offset = offset
        super().__init__(f"corrupt record batch in segment {segment} at offset {offset}: {reason}")


class LogFullError(LogError, OSError):
    """The disk is full (or a file size limit was hit); nothing was written."""


class OffsetOutOfRangeError(LogError):
    """An offset below the log start (deleted by retention) or above the end."""


class PartitionLockedError(LogError):
    """Another holder has the lock (a consumer-group partition, a cleaner)."""


__all__ = [
    "CorruptRecordError",
    "InvalidRecordError",
    "LogError",
    "LogFullError",
    "OffsetOutOfRangeError",
    "PartitionLockedError",
    "PartitionNotFoundError",
    "RecordTooLargeError",
    "SchemaMismatchError",
    "TopicExistsError",
    "TopicNotFoundError",
]
