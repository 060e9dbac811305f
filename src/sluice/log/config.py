"""Topic configuration: typed, validated, stored as ``topic.json`` in the topic directory.

Names follow Kafka's topic configs (``retention.ms`` is ``retention_ms``, ...);
sizes accept ``"10GB"``/``"64MiB"`` or bytes and durations ``"7d"``/``"1h"``/
``timedelta``/milliseconds, parsed by Sluice's one size and duration parsers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sluice.errors import ConfigError
from sluice.log.format import CODECS
from sluice.time.durations import parse_duration

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
#: Column types a topic schema may declare (values are JSON objects).
SCHEMA_TYPES = ("str", "int", "float", "bool", "datetime", "any")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)


def parse_size(value: int | str, *, what: str = "size") -> int:
    """Bytes from an int or a string such as ``"10GB"``, ``"64MiB"``, ``"1g"``.

    >>> parse_size("10GB"), parse_size("4KiB"), parse_size(100)
    (10000000000, 4096, 100)
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size like '10GB', got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        if m is None:
            raise ConfigError(f"{what}: cannot parse {value!r}; use e.g. 1000000, '64MB', '10GiB'")
        unit = m.group(2).lower().rstrip("b")
        base = 1024 if unit.endswith("i") else 1000
        n = int(float(m.group(1)) * base ** " kmgt".index(unit.rstrip("i") or " "))
    if n < 1:
        raise ConfigError(f"{what}: must be at least 1 byte, got {value!r}")
    return n


def check_topic_name(name: str) -> str:
    """Topic names are Kafka's: letters, digits, ``.``, ``_`` and ``-``, at most 200."""
    if not isinstance(name, str) or not _TOPIC_NAME.match(name) or name in (".", ".."):
        raise ConfigError(
            f"invalid topic name {name!r}: use 1 to 200 letters, digits, '.', '_' or '-'"
        )
    return name


def _duration_or_none(value: Any, what: str) -> int | None:
    if value is None or value == -1 or value in ("-1", "forever", "infinite", "none"):
        return None
    return parse_duration(value, what=what)


def _size_or_none(value: Any, what: str) -> int | None:
    if value is None or value == -1 or value in ("-1", "infinite", "none"):
        return None
    return parse_size(value, what=what)


@dataclass(frozen=True)
class TopicConfig:
    """How a topic stores its records. Defaults work on a laptop and follow Kafka's.

    ``retention`` / ``retention_bytes`` bound each partition by age (the newest
    record of a closed segment) and size; ``None`` keeps records forever.
    ``compact=True`` sets the cleanup policy to compaction (latest value per
    key); with ``retention`` too, it is Kafka's ``compact,delete``.
    ``archive=True`` copies closed segments to Parquet (tiered storage);
    ``local_retention``/``local_retention_bytes`` then bound what stays in
    segment files, and older records are read from Parquet.
    ``producer_expiration`` is how long the producer state of a partition
    remembers a producer id it has not seen (Kafka's
    ``producer.id.expiration.ms``; see :mod:`sluice.log.producer_state`).

    >>> TopicConfig.make(partitions=4, retention="7d", retention_bytes="10GB").retention_ms
    604800000
    """

    partitions: int = 1
    retention_ms: int | None = 7 * 86_400_000
    retention_bytes: int | None = None
    compression: str = "none"
    compact: bool = False
    delete_retention_ms: int = 86_400_000
    min_cleanable_dirty_ratio: float = 0.5
    compaction_buffer_bytes: int = 32 * 1024 * 1024
    segment_bytes: int = 128 * 1024 * 1024
    segment_ms: int = 7 * 86_400_000
    index_interval_bytes: int = 4096
    max_record_bytes: int = 1024 * 1024
    schema: dict[str, str] | None = None
    archive: bool = False
    local_retention_ms: int | None = None
    local_retention_bytes: int | None = None
    producer_expiration_ms: int | None = 7 * 86_400_000
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(
        cls,
        *,
        partitions: int = 1,
        retention: Any = "default",
        retention_bytes: Any = None,
        compression: str = "none",
        compact: bool = False,
        delete_retention: Any = "1d",
        min_cleanable_dirty_ratio: float = 0.5,
        compaction_buffer: Any = "32MiB",
        segment_bytes: Any = "128MiB",
        segment_age: Any = "7d",
        index_interval_bytes: Any = 4096,
        max_record_bytes: Any = "1MiB",
        schema: dict[str, Any] | None = None,
        archive: bool = False,
        local_retention: Any = None,
        local_retention_bytes: Any = None,
        producer_expiration: Any = "7d",
    ) -> TopicConfig:
        """Build a validated config from user-friendly values (sizes, durations).

        ``retention`` defaults to 7 days, or to forever for a compacted topic
        (Kafka's ``cleanup.policy=compact`` deletes nothing by age)."""
        if retention == "default":
            retention = None if compact else "7d"
        cfg = cls(
            partitions=partitions,
            retention_ms=_duration_or_none(retention, "retention"),
            retention_bytes=_size_or_none(retention_bytes, "retention_bytes"),
            compression=compression,
            compact=compact,
            delete_retention_ms=parse_duration(delete_retention, what="delete_retention"),
            min_cleanable_dirty_ratio=min_cleanable_dirty_ratio,
            compaction_buffer_bytes=parse_size(compaction_buffer, what="compaction_buffer"),
            segment_bytes=parse_size(segment_bytes, what="segment_bytes"),
            segment_ms=parse_duration(segment_age, what="segment_age", allow_zero=False),
            index_interval_bytes=parse_size(index_interval_bytes, what="index_interval_bytes"),
            max_record_bytes=parse_size(max_record_bytes, what="max_record_bytes"),
            schema=normalize_schema(schema),
            archive=archive,
            local_retention_ms=_duration_or_none(local_retention, "local_retention"),
            local_retention_bytes=_size_or_none(local_retention_bytes, "local_retention_bytes"),
            producer_expiration_ms=_duration_or_none(producer_expiration, "producer_expiration"),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not isinstance(self.partitions, int) or not 1 <= self.partitions <= 10_000:
            raise ConfigError(
                f"partitions must be an integer from 1 to 10000, got {self.partitions!r}"
            )
        if self.compression not in CODECS:
            raise ConfigError(
                f"unknown compression {self.compression!r}; use 'none', 'zstd' or 'lz4'"
            )
        if not 4096 <= self.segment_bytes <= 2**31:
            raise ConfigError(f"segment_bytes must be from 4KiB to 2GiB, got {self.segment_bytes}")
        if not 1 <= self.max_record_bytes <= 256 * 1024 * 1024:
            raise ConfigError(
                f"max_record_bytes must be from 1 B to 256MiB, got {self.max_record_bytes}"
            )
        if not 0.0 <= self.min_cleanable_dirty_ratio <= 1.0:
            raise ConfigError("min_cleanable_dirty_ratio must be between 0 and 1")
        if not 56 <= self.compaction_buffer_bytes <= 2**40:
            raise ConfigError(
                "compaction_buffer must be from 56 B to 1TiB (the cleaner's offset map: "
                f"28 bytes per key, at least two), got {self.compaction_buffer_bytes}"
            )

    @property
    def cleanup_policy(self) -> str:
        """Kafka's ``cleanup.policy``: ``delete``, ``compact`` or ``compact,delete``."""
        if not self.compact:
            return "delete"
        return "compact,delete" if self.retention_ms or self.retention_bytes else "compact"

    def altered(self, **changes: Any) -> TopicConfig:
        """A copy with ``changes`` (friendly values accepted, as in :meth:`make`)."""
        conv: dict[str, Any] = {}
        for k, v in changes.items():
            if k == "retention":
                conv["retention_ms"] = _duration_or_none(v, "retention")
            elif k == "retention_bytes":
                conv["retention_bytes"] = _size_or_none(v, "retention_bytes")
            elif k == "delete_retention":
                conv["delete_retention_ms"] = parse_duration(v, what="delete_retention")
            elif k == "segment_bytes":
                conv["segment_bytes"] = parse_size(v, what="segment_bytes")
            elif k == "segment_age":
                conv["segment_ms"] = parse_duration(v, what="segment_age", allow_zero=False)
            elif k == "compaction_buffer":
                conv["compaction_buffer_bytes"] = parse_size(v, what="compaction_buffer")
            elif k == "max_record_bytes":
                conv["max_record_bytes"] = parse_size(v, what="max_record_bytes")
            elif k == "local_retention":
                conv["local_retention_ms"] = _duration_or_none(v, "local_retention")
            elif k == "local_retention_bytes":
                conv["local_retention_bytes"] = _size_or_none(v, "local_retention_bytes")
            elif k == "producer_expiration":
                conv["producer_expiration_ms"] = _duration_or_none(v, "producer_expiration")
            elif k == "schema":
                conv["schema"] = normalize_schema(v)
            elif k in {"compression", "compact", "archive", "min_cleanable_dirty_ratio"}:
                conv[k] = v
            elif k == "partitions":
                if v < self.partitions:
                    raise ConfigError(
                        f"partitions can only grow (from {self.partitions}), as in Kafka"
                    )
                conv[k] = v
            else:
                raise ConfigError(f"unknown or unalterable topic setting {k!r}")
        cfg = replace(self, **conv)
        cfg.validate()
        return cfg

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TopicConfig:
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in data.items() if k in known})
        cfg.validate()
        return cfg

    def describe(self) -> dict[str, Any]:
        """Human-readable settings (for ``sluice topic describe``)."""

        def dur(ms: int | None) -> str:
            return "forever" if ms is None else _fmt_ms(ms)

        def size(n: int | None) -> str:
            return "unlimited" if n is None else _fmt_bytes(n)

        return {
            "partitions": self.partitions,
            "cleanup_policy": self.cleanup_policy,
            "retention": dur(self.retention_ms),
            "retention_bytes": size(self.retention_bytes),
            "compression": self.compression,
            "segment_bytes": size(self.segment_bytes),
            "segment_age": dur(self.segment_ms),
            "max_record_bytes": size(self.max_record_bytes),
            "schema": self.schema,
            "archive": self.archive,
            "local_retention": dur(self.local_retention_ms),
            "local_retention_bytes": size(self.local_retention_bytes),
            "producer_expiration": dur(self.producer_expiration_ms),
        }


def normalize_schema(schema: dict[str, Any] | None) -> dict[str, str] | None:
    """Validate a declared value schema: ``{"field": "str" | "int" | "float" | "bool" |
    "datetime" | "any"}``; a ``?`` suffix makes a field optional (``"int?"``)."""
    if schema is None:
        return None
    if not isinstance(schema, dict) or not schema:
        raise ConfigError("schema must be a non-empty dict of field name -> type")
    out: dict[str, str] = {}
    for k, v in schema.items():
        t = v if isinstance(v, str) else getattr(v, "__name__", str(v))
        base = t.rstrip("?")
        if base not in SCHEMA_TYPES:
            raise ConfigError(
                f"schema field {k!r}: unknown type {t!r}; use one of {', '.join(SCHEMA_TYPES)} "
                "(append '?' for optional)"
            )
        out[str(k)] = t
    return out


def _fmt_ms(ms: int) -> str:
    for unit, n in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= n and ms % n == 0:
            return f"{ms // n}{unit}"
    return f"{ms}ms"


def _fmt_bytes(n: int) -> str:
    units = (
        ("GiB", 2**30),
        ("GB", 10**9),
        ("MiB", 2**20),
        ("MB", 10**6),
        ("KiB", 2**10),
        ("KB", 10**3),
    )
    for unit, size in units:
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    for unit, size in units[::2]:
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def write_json_atomic(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path``: temporary file, fsync, rename, fsync of the
    directory. A reader sees the old or the new content, never a mix."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = [
    "TopicConfig",
    "check_topic_name",
    "normalize_schema",
    "parse_size",
    "write_json_atomic",
]
