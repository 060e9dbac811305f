"""The data directory: topics, their partitions, and the entry points to produce,
consume and maintain them.

Layout of a data directory (``SLUICE_HOME`` or an explicit path)::

    <data dir>/
      topics/<topic>/topic.json           the topic's TopicConfig
      topics/<topic>/<partition>/         segments, indexes, head, locks (see segment.py)
      groups/<group>/                     consumer groups (see groups.py)
      archive/<topic>/<partition>/        Parquet copies of closed segments (archive.py)

Creating a topic builds it under a temporary name and renames it into place,
so a topic is either fully there or absent; deleting renames it away first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from sluice.log.config import TopicConfig, check_topic_name, fsync_dir, write_json_atomic
from sluice.log.errors import PartitionNotFoundError, TopicExistsError, TopicNotFoundError
from sluice.log.format import HEADER_SIZE, parse_header
from sluice.log.partition import Partition
from sluice.log.segment import list_segments
from sluice.time.durations import Duration, parse_duration

_logger = logging.getLogger("sluice.log")

#: Used when neither ``data_dir`` nor ``SLUICE_HOME`` is given.
DEFAULT_HOME = os.path.join("~", ".sluice")
_CONFIG_RECHECK_S = 1.0


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> str:
    """``data_dir``, else ``$SLUICE_HOME``, else ``~/.sluice``, as an absolute path."""
    d = os.fspath(data_dir) if data_dir is not None else os.environ.get("SLUICE_HOME")
    return os.path.abspath(os.path.expanduser(d or DEFAULT_HOME))


class Log:
    """A data directory of topics: the embedded partitioned log.

    >>> import tempfile
    >>> log = Log(tempfile.mkdtemp())
    >>> log.create_topic("orders", partitions=2, retention="7d", compression="zstd")
    >>> log.topics()
    ['orders']
    >>> with log.producer() as p:
    ...     p.send("orders", b'{"id": 1}', key=b"ana").partition
    0
    >>> with log.consumer("orders", from_="earliest") as c:
    ...     c.poll_batch(timeout=1.0)["value"].to_list()
    [b'{"id": 1}']
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        maintenance_interval: Duration | None = None,
    ) -> None:
        self.data_dir = resolve_data_dir(data_dir)
        self._maintainer: threading.Thread | None = None
        self._stop_maintainer = threading.Event()
        os.makedirs(os.path.join(self.data_dir, "topics"), exist_ok=True)
        os.makedirs(os.path.join(self.data_dir, "groups"), exist_ok=True)
        self._lock = threading.RLock()
        self._partitions: dict[tuple[str, int], Partition] = {}
        self._configs: dict[str, tuple[float, int, TopicConfig]] = {}
        if maintenance_interval is not None:
            # Kafka's log.retention.check.interval.ms: retention, compaction and
            # archiving also run when no segment rolls (a topic nobody writes to)
            every = parse_duration(
                maintenance_interval, what="maintenance interval", allow_zero=False
            )
            self._maintainer = threading.Thread(
                target=self._maintain_every,
                args=(every / 1000,),
                name="sluice-log-maintenance",
                daemon=True,
            )
            self._maintainer.start()

    def __repr__(self) -> str:
        return f"Log({self.data_dir!r})"

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths -----------------------------------------------------------------------
    def topic_dir(self, topic: str) -> str:
        return os.path.join(self.data_dir, "topics", topic)

    def partition_dir(self, topic: str, partition: int) -> str:
        return os.path.join(self.topic_dir(topic), str(partition))

    def archive_dir(self, topic: str, partition: int) -> str:
        return os.path.join(self.data_dir, "archive", topic, str(partition))

    # -- topics ----------------------------------------------------------------------
    def create_topic(
        self,
        name: str,
        *,
        partitions: int = 1,
        retention: Any = "default",
        retention_bytes: Any = None,
        compression: str = "none",
        compact: bool = False,
        exist_ok: bool = False,
        config: TopicConfig | None = None,
        **settings: Any,
    ) -> None:
        """Create a topic. ``settings`` are the other :meth:`TopicConfig.make`
        arguments (``segment_bytes``, ``schema``, ``archive``, ...).

        Raises :class:`TopicExistsError` if it exists (unless ``exist_ok``).
        """
        check_topic_name(name)
        if config is None:
            config = TopicConfig.make(
                partitions=partitions,
                retention=retention,
                retention_bytes=retention_bytes,
                compression=compression,
                compact=compact,
                **settings,
            )
        final = self.topic_dir(name)
        if os.path.exists(final):
            if exist_ok:
                return
            raise TopicExistsError(f"topic {name!r} already exists in {self.data_dir}")
        tmp = os.path.join(self.data_dir, "topics", f".creating-{name}-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        try:
            write_json_atomic(os.path.join(tmp, "topic.json"), config.to_json())
            for p in range(config.partitions):
                Partition.create(
                    os.path.join(tmp, str(p)), topic=name, index=p, config=config
                ).close()
            try:
                os.rename(tmp, final)
            except OSError:
                if exist_ok:
                    return
                raise TopicExistsError(
                    f"topic {name!r} already exists in {self.data_dir}"
                ) from None
            fsync_dir(os.path.dirname(final))
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)

    def topics(self) -> list[str]:
        """Names of the topics, sorted."""
        root = os.path.join(self.data_dir, "topics")
        return sorted(
            n
            for n in os.listdir(root)
            if not n.startswith(".") and os.path.isfile(os.path.join(root, n, "topic.json"))
        )

    def exists(self, topic: str) -> bool:
        return os.path.isfile(os.path.join(self.topic_dir(topic), "topic.json"))

    def config(self, topic: str, *, fresh: bool = False) -> TopicConfig:
        """The topic's configuration (re-read when ``topic.json`` changes)."""
        now = time.monotonic()
        cached = self._configs.get(topic)
        if cached is not None and not fresh and now - cached[0] < _CONFIG_RECHECK_S:
            return cached[2]
        path = os.path.join(self.topic_dir(topic), "topic.json")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._configs.pop(topic, None)
            raise TopicNotFoundError(topic, self.data_dir) from None
        if cached is not None and cached[1] == st.st_mtime_ns:
            self._configs[topic] = (now, cached[1], cached[2])
            return cached[2]
        with open(path, encoding="utf-8") as f:
            cfg = TopicConfig.from_json(json.load(f))
        self._configs[topic] = (now, st.st_mtime_ns, cfg)
        with self._lock:
            for (t, _), part in self._partitions.items():
                if t == topic:
                    part.config = cfg
        return cfg

    def alter_topic(self, topic: str, **changes: Any) -> TopicConfig:
        """Change settings of a topic (``retention``, ``compression``, ``partitions``
        (only up), ...). Returns the new configuration."""
        cfg = self.config(topic, fresh=True)
        new = cfg.altered(**changes)
        for p in range(cfg.partitions, new.partitions):
            d = self.partition_dir(topic, p)
            if not os.path.exists(os.path.join(d, "head")):
                Partition.create(d, topic=topic, index=p, config=new).close()
        write_json_atomic(os.path.join(self.topic_dir(topic), "topic.json"), new.to_json())
        self._configs.pop(topic, None)
        return self.config(topic, fresh=True)

    def delete_topic(self, topic: str) -> None:
        """Delete a topic, its archive and the groups' committed offsets for it."""
        d = self.topic_dir(topic)
        if not self.exists(topic):
            raise TopicNotFoundError(topic, self.data_dir)
        with self._lock:
            for key in [k for k in self._partitions if k[0] == topic]:
                self._partitions.pop(key).close()
        gone = os.path.join(self.data_dir, "topics", f".deleted-{topic}-{uuid.uuid4().hex[:8]}")
        os.rename(d, gone)
        fsync_dir(os.path.dirname(d))
        shutil.rmtree(gone, ignore_errors=True)
        shutil.rmtree(os.path.join(self.data_dir, "archive", topic), ignore_errors=True)
        from sluice.log.groups import forget_topic

        forget_topic(self.data_dir, topic)
        self._configs.pop(topic, None)

    # -- partitions --------------------------------------------------------------------
    def partition(self, topic: str, index: int) -> Partition:
        """The :class:`Partition` ``index`` of ``topic`` (shared within this Log)."""
        cfg = self.config(topic)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < cfg.partitions:
            raise PartitionNotFoundError(
                f"topic {topic!r} has no partition {index!r}: "
                f"it has partitions 0 to {cfg.partitions - 1}"
            )
        key = (topic, index)
        with self._lock:
            part = self._partitions.get(key)
            if part is None:
                part = Partition(
                    self.partition_dir(topic, index), topic=topic, index=index, config=cfg
                )
                part.on_roll = self._after_roll
                self._partitions[key] = part
            return part

    def partitions(self, topic: str) -> list[Partition]:
        return [self.partition(topic, i) for i in range(self.config(topic).partitions)]

    def _after_roll(self, partition: Partition) -> None:
        from sluice.log.retention import maintain_partition

        with contextlib.suppress(Exception):  # maintenance must never fail an append
            maintain_partition(self, partition)

    # -- clients -------------------------------------------------------------------------
    def producer(self, **options: Any) -> Any:
        """A :class:`~sluice.log.producer.Producer` on this log."""
        from sluice.log.producer import Producer

        return Producer(self, **options)

    def consumer(self, topics: str | Iterable[str], **options: Any) -> Any:
        """A :class:`~sluice.log.consumer.Consumer` of ``topics`` on this log."""
        from sluice.log.consumer import Consumer

        return Consumer(self, topics, **options)

    # -- inspection and maintenance ------------------------------------------------------
    def offsets(self, topic: str, partition: int) -> tuple[int, int]:
        """``(log start offset, high watermark)`` of a partition."""
        from sluice.log.archive import archived_range

        part = self.partition(topic, partition)
        end = part.high_watermark()
        bases = part.segments()
        start = bases[0] if bases else end
        a0, a1 = archived_range(part)
        if a0 < a1:
            start = min(start, a0)
        return start, end

    def stats(self, topic: str) -> list[dict[str, Any]]:
        """Per partition: offsets, records, bytes, segments, and each group's
        committed offset and lag (for ``sluice topic stats``)."""
        from sluice.log.groups import committed_offsets

        rows = []
        groups = committed_offsets(self.data_dir, topic)
        for part in self.partitions(topic):
            start, end = self.offsets(topic, part.index)
            records, size = count_records(part)
            row: dict[str, Any] = {
                "partition": part.index,
                "start_offset": start,
                "end_offset": end,
                "records": records,
                "bytes": size,
                "segments": len(part.segments()),
                "groups": {},
            }
            for g, offs in groups.items():
                if part.index in offs:
                    c = offs[part.index]
                    row["groups"][g] = {"committed": c, "lag": max(0, end - max(c, start))}
            rows.append(row)
        return rows

    def maintain(self, topic: str | None = None) -> dict[str, Any]:
        """Run retention, compaction and archiving now (they also run when a segment
        rolls). Returns what was done, per topic."""
        from sluice.log.retention import maintain_partition

        done: dict[str, Any] = {}
        for t in [topic] if topic else self.topics():
            done[t] = [maintain_partition(self, p) for p in self.partitions(t)]
        return done

    def _maintain_every(self, seconds: float) -> None:
        while not self._stop_maintainer.wait(seconds):
            try:
                self.maintain()
            except Exception:  # keep the schedule; the next round retries
                _logger.exception("background maintenance of %s failed", self.data_dir)

    def close(self) -> None:
        self._stop_maintainer.set()
        if self._maintainer is not None and self._maintainer is not threading.current_thread():
            self._maintainer.join()
        with self._lock:
            for part in self._partitions.values():
                part.close()
            self._partitions.clear()


def count_records(part: Partition) -> tuple[int, int]:
    """Records and bytes of the local segments, from batch headers (no decoding)."""
    records = size = 0
    st = part.state()
    for base in list_segments(part.dir):
        try:
            fd = os.open(part.segment_file(base), os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            end = st.active_end if base == st.active_base else os.fstat(fd).st_size
            size += end
            pos = 0
            while pos + HEADER_SIZE <= end:
                h = parse_header(os.pread(fd, HEADER_SIZE, pos))
                if h is None:
                    break
                records += h.record_count
                pos += h.length
        finally:
            os.close(fd)
    return records, size


__all__ = ["DEFAULT_HOME", "Log", "count_records", "resolve_data_dir"]
