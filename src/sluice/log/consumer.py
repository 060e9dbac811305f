"""Consuming records: by offset or timestamp, alone or in a consumer group.

Without ``group`` a consumer reads every partition of its topics (or the ones
given). With ``group``, the consumers of that group on this machine split the
partitions among them (see :mod:`sluice.log.groups`) and commit their offsets
durably; a consumer that joins, leaves or dies makes the others rebalance
within ``rebalance_interval``.

Where to start in a partition (Kafka's rules): the group's committed offset if
there is one, else ``from_``: ``"earliest"`` (the log start) or ``"latest"``
(only new records, the default as in Kafka). ``from_`` may also be an offset
(``int``) or a timestamp (a ``datetime``): then every partition starts there,
committed offsets notwithstanding (like ``seek`` after assignment). An offset
deleted by retention while being read is replaced by the log start
(``"earliest"``) or end (``"latest"``), as Kafka's ``auto.offset.reset``.

With ``auto_commit`` (the default), positions are committed every
``auto_commit_interval`` at the start of a poll, and on close: a record is
committed only after a later poll, so processing is at-least-once.

Tailing: an up-to-date partition costs one read of its memory-mapped head per
poll; ``poll_batch(timeout=...)`` checks every 0.2 ms until records arrive, so
a record is seen well under a millisecond after it is published.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa

from sluice.errors import ConfigError
from sluice.log.errors import LogError, OffsetOutOfRangeError
from sluice.log.groups import Membership, OffsetStore, range_assign
from sluice.log.reader import PartitionReader, offset_for_time
from sluice.time.durations import Duration, parse_duration

_TAIL_SLEEP_S = 0.0002
#: Columns of what ``poll_batch`` returns.
BATCH_SCHEMA = {
    "topic": pl.String,
    "partition": pl.Int32,
    "offset": pl.Int64,
    "timestamp": pl.Int64,
    "key": pl.Binary,
    "value": pl.Binary,
}


@dataclass(frozen=True)
class Record:
    """One consumed record (``poll`` / iteration; ``poll_batch`` is the fast path)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None = None

    def json(self) -> Any:
        """The value parsed as JSON (``None`` for a tombstone)."""
        return None if self.value is None else json.loads(self.value)


def parse_start(value: Any) -> str | int | datetime:
    """``"earliest"``, ``"latest"``, an offset (int or digits) or a timestamp
    (``datetime`` or ISO-8601 text, as the CLI's ``--from``).

    >>> parse_start("12"), parse_start("earliest")
    (12, 'earliest')
    >>> parse_start("2024-05-01T09:00:00Z")
    datetime.datetime(2024, 5, 1, 9, 0, tzinfo=datetime.timezone.utc)
    """
    if isinstance(value, datetime) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        v = value.strip()
        if v.lower() in ("earliest", "latest"):
            return v.lower()
        if v.isdigit():
            return int(v)
        try:
            ts = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return ts if ts.tzinfo else ts.astimezone()
    raise ConfigError(
        f"cannot start from {value!r}: use 'earliest', 'latest', an offset or an "
        "ISO-8601 timestamp such as 2024-05-01T09:00:00Z"
    )


class Consumer:
    """Reads records from topics of a :class:`~sluice.log.topic.Log`.

    >>> import tempfile
    >>> from sluice.log import Log
    >>> log = Log(tempfile.mkdtemp())
    >>> log.create_topic("t", partitions=2)
    >>> with log.producer() as p:
    ...     _ = p.send_many("t", [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}])
    >>> with log.consumer("t", group="g1", from_="earliest") as c:
    ...     sorted(r.value for r in c.poll(timeout=1.0))
    [b'1', b'2']
    >>> log.stats("t")[0]["groups"]["g1"]["lag"]
    0
    """

    def __init__(
        self,
        log: Any,
        topics: str | Iterable[str],
        *,
        group: str | None = None,
        from_: Any = "latest",
        partitions: Iterable[int] | None = None,
        auto_commit: bool = True,
        auto_commit_interval: Duration = "5s",
        rebalance_interval: Duration = "100ms",
        member_id: str | None = None,
    ) -> None:
        self.log = log
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ConfigError("a consumer needs at least one topic")
        for t in self.topics:
            log.config(t)  # raises TopicNotFoundError
        self.group = group
        self.start = parse_start(from_)
        self.auto_commit = auto_commit and group is not None
        self._commit_every = (
            parse_duration(auto_commit_interval, what="auto_commit_interval") / 1000
        )
        self._rebalance_every = parse_duration(rebalance_interval, what="rebalance_interval") / 1000
        self._fixed = None if partitions is None else sorted(set(partitions))
        if self._fixed is not None and len(self.topics) != 1:
            raise ConfigError("partitions= needs exactly one topic")
        self._readers: dict[tuple[str, int], PartitionReader] = {}
        self._started: set[tuple[str, int]] = set()
        self._committed: dict[tuple[str, int], int] = {}
        self._store = OffsetStore(log.data_dir, group) if group is not None else None
        self._member = Membership(log.data_dir, group, member_id) if group is not None else None
        if self._member is not None:
            self._member.join()
        self._next_rebalance = 0.0
        self._next_commit = time.monotonic() + self._commit_every
        self._rr = 0
        self._closed = False
        self._rebalance(force=True)

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- assignment ----------------------------------------------------------------------
    def assignment(self) -> list[tuple[str, int]]:
        """The ``(topic, partition)`` pairs this consumer reads now."""
        return sorted(self._readers)

    def _target(self) -> set[tuple[str, int]]:
        if self._fixed is not None:
            return {(self.topics[0], p) for p in self._fixed}
        out = set()
        members = self._member.live_members() if self._member is not None else None
        for t in self.topics:
            n = self.log.config(t).partitions
            if members is None:
                out |= {(t, p) for p in range(n)}
            else:
                assert self._member is not None
                out |= {(t, p) for p in range_assign(members, self._member.member_id, n)}
        return out

    def _rebalance(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_rebalance:
            return
        self._next_rebalance = now + self._rebalance_every
        target = self._target()
        for key in [k for k in self._readers if k not in target]:
            if self.auto_commit:
                self._commit_one(key)
            self._readers.pop(key).close()
            if self._member is not None:
                self._member.release(*key)
        for key in sorted(target - set(self._readers)):
            if self._member is not None and not self._member.try_acquire(*key):
                continue  # the previous owner has not let go yet
            part = self.log.partition(*key)
            self._readers[key] = PartitionReader(part, self._initial_offset(key))

    def _initial_offset(self, key: tuple[str, int]) -> int:
        start, end = self.log.offsets(*key)
        if isinstance(self.start, int) and key not in self._started:
            self._started.add(key)
            return min(max(self.start, start), end)
        if isinstance(self.start, datetime) and key not in self._started:
            self._started.add(key)
            found = offset_for_time(self.log.partition(*key), int(self.start.timestamp() * 1000))
            return end if found is None else found
        if self._store is not None:
            c = self._store.committed(*key)
            if c is not None:
                self._committed[key] = c
                return min(max(c, start), end)
        return start if self.start == "earliest" else end

    def _reset(self, key: tuple[str, int]) -> None:
        start, end = self.log.offsets(*key)
        self._readers[key].seek(end if self.start == "latest" else start)

    # -- positions -----------------------------------------------------------------------
    def position(self, topic: str, partition: int) -> int:
        """The offset of the next record this consumer will return from the partition."""
        return self._reader(topic, partition).offset

    def _reader(self, topic: str, partition: int) -> PartitionReader:
        try:
            return self._readers[(topic, partition)]
        except KeyError:
            raise LogError(
                f"partition {topic}/{partition} is not assigned to this consumer "
                f"(assigned: {self.assignment()})"
            ) from None

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read the partition from ``offset`` on."""
        self._reader(topic, partition).seek(offset)

    def seek_to_beginning(self) -> None:
        for key, r in self._readers.items():
            r.seek(self.log.offsets(*key)[0])

    def seek_to_end(self) -> None:
        for key, r in self._readers.items():
            r.seek(self.log.offsets(*key)[1])

    def seek_to_time(self, ts: datetime | int) -> None:
        """Move every assigned partition to its first record at or after ``ts``
        (a datetime or epoch milliseconds); to the end where there is none."""
        ms = int(ts.timestamp() * 1000) if isinstance(ts, datetime) else int(ts)
        for key, r in self._readers.items():
            found = offset_for_time(r.partition, ms)
            r.seek(self.log.offsets(*key)[1] if found is None else found)

    def lag(self) -> dict[tuple[str, int], int]:
        """Records published but not yet returned, per assigned partition."""
        return {
            k: max(0, r.partition.high_watermark() - r.offset) for k, r in self._readers.items()
        }

    # -- commits -------------------------------------------------------------------------
    def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset of the partition (``None`` if none)."""
        if self._store is None:
            return None
        return self._store.committed(topic, partition)

    def commit(self) -> None:
        """Durably commit the current positions of the assigned partitions."""
        if self._store is None:
            raise LogError("commit needs a consumer group: pass group='name' to the consumer")
        for key in list(self._readers):
            self._commit_one(key)

    def _commit_one(self, key: tuple[str, int]) -> None:
        assert self._store is not None
        pos = self._readers[key].offset
        if self._committed.get(key) != pos:
            member = self._member.member_id if self._member is not None else None
            self._store.commit(*key, pos, member=member)
            self._committed[key] = pos

    # -- polling -------------------------------------------------------------------------
    def poll_batch(
        self, timeout: float = 0.0, *, max_records: int = 100_000, max_bytes: int = 16 << 20
    ) -> pl.DataFrame:
        """Records as a DataFrame (columns topic, partition, offset, timestamp, key,
        value, and headers if any record has them), waiting up to ``timeout``
        seconds for some to arrive. Empty (with those columns) if none came."""
        if self._closed:
            raise LogError("the consumer is closed")
        deadline = time.monotonic() + timeout
        if self.auto_commit and time.monotonic() >= self._next_commit:
            self.commit()
            self._next_commit = time.monotonic() + self._commit_every
        while True:
            self._rebalance()
            tables = self._read_round(max_records, max_bytes)
            if tables:
                table = (
                    tables[0]
                    if len(tables) == 1
                    else pa.concat_tables(tables, promote_options="default")
                )
                df = pl.from_arrow(table)
                assert isinstance(df, pl.DataFrame)
                return df
            if time.monotonic() >= deadline:
                return pl.DataFrame(schema=BATCH_SCHEMA)
            time.sleep(_TAIL_SLEEP_S)

    def _read_round(self, max_records: int, max_bytes: int) -> list[pa.Table]:
        keys = sorted(self._readers)
        if not keys:
            return []
        self._rr = (self._rr + 1) % len(keys)
        tables: list[pa.Table] = []
        left = max_records
        per_part = max(1 << 16, max_bytes // len(keys))
        for key in keys[self._rr :] + keys[: self._rr]:
            r = self._readers[key]
            try:
                t = r.read(per_part, left)
            except OffsetOutOfRangeError:
                self._reset(key)
                t = r.read(per_part, left)
            if t is None or t.num_rows == 0:
                continue
            n = t.num_rows
            t = t.add_column(0, "partition", pa.repeat(pa.scalar(key[1], pa.int32()), n))
            t = t.add_column(0, "topic", pa.repeat(pa.scalar(key[0], pa.string()), n))
            tables.append(t)
            left -= n
            if left <= 0:
                break
        return tables

    def poll(self, timeout: float = 0.0, *, max_records: int = 10_000) -> list[Record]:
        """Records as :class:`Record` objects (one Python object per record)."""
        df = self.poll_batch(timeout, max_records=max_records)
        if "headers" in df.columns:
            hs = [
                None if h is None else [(e["key"], e["value"]) for e in h]
                for h in df.get_column("headers").to_list()
            ]
        else:
            hs = [None] * df.height
        return [
            Record(t, p, o, ts, k, v, h)
            for (t, p, o, ts, k, v), h in zip(
                df.select(BATCH_SCHEMA.keys()).iter_rows(), hs, strict=True
            )
        ]

    def __iter__(self) -> Iterator[Record]:
        """Records forever (like ``tail -f``); stop by breaking out of the loop."""
        while True:
            yield from self.poll(timeout=0.5)

    def close(self) -> None:
        """Commit (with ``auto_commit``), release the partitions, leave the group."""
        if self._closed:
            return
        try:
            if self.auto_commit:
                self.commit()
        finally:
            self._closed = True
            for r in self._readers.values():
                r.close()
            self._readers.clear()
            if self._member is not None:
                self._member.leave()


__all__ = ["BATCH_SCHEMA", "Consumer", "Record", "parse_start"]
