"""Consumer groups on one machine: durable committed offsets and partition assignment.

Files of a group (``<data dir>/groups/<group>/``)::

    offsets/<topic>/<partition>      committed offset (JSON), one file per partition
    members/<member id>              exists and is flock'ed while the member lives
    owners/<topic>/<partition>.lock  flock'ed by the member reading the partition

A commit writes a temporary file, fsyncs it and renames it over the old one:
a committed offset survives a crash of the process or of the machine and is
never half written. Only the member that holds a partition's owner lock
commits for it, so committed offsets never move backwards because of a
rebalance.

Membership needs no heartbeats: a member holds an exclusive ``flock`` on its
member file, which the kernel releases when the process dies, so a live member
is one whose file cannot be locked. Every member computes the same assignment
from the sorted list of live members (Kafka's range assignor: per topic, member
``i`` of ``m`` gets a contiguous range of the partitions, the first ``n % m``
members one more). A member gives up partitions no longer assigned to it
(committing first) and takes newly assigned ones as soon as their previous
owner lets go of the owner lock; a partition is never read by two members of a
group at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from typing import Any

from sluice.log.config import write_json_atomic
from sluice.log.partition import now_ms


def group_dir(data_dir: str, group: str) -> str:
    return os.path.join(data_dir, "groups", group)


def committed_offsets(data_dir: str, topic: str) -> dict[str, dict[int, int]]:
    """``{group: {partition: committed offset}}`` of every group that committed for ``topic``."""
    root = os.path.join(data_dir, "groups")
    out: dict[str, dict[int, int]] = {}
    with contextlib.suppress(FileNotFoundError):
        for g in sorted(os.listdir(root)):
            offs = OffsetStore(data_dir, g).all(topic)
            if offs:
                out[g] = offs
    return out


def forget_topic(data_dir: str, topic: str) -> None:
    """Remove every group's offsets and owner locks of a deleted topic."""
    root = os.path.join(data_dir, "groups")
    with contextlib.suppress(FileNotFoundError):
        for g in os.listdir(root):
            for sub in ("offsets", "owners"):
                shutil.rmtree(os.path.join(root, g, sub, topic), ignore_errors=True)


class OffsetStore:
    """The committed offsets of one group.

    >>> import tempfile
    >>> store = OffsetStore(tempfile.mkdtemp(), "g1")
    >>> store.commit("orders", 0, 42)
    >>> store.committed("orders", 0), store.committed("orders", 1)
    (42, None)
    """

    def __init__(self, data_dir: str, group: str) -> None:
        self.dir = os.path.join(group_dir(data_dir, group), "offsets")

    def _path(self, topic: str, partition: int) -> str:
        return os.path.join(self.dir, topic, str(partition))

    def commit(self, topic: str, partition: int, offset: int, *, member: str | None = None) -> None:
        """Durably record ``offset`` (the next offset to read) for the partition."""
        path = self._path(topic, partition)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, {"offset": int(offset), "committed_ms": now_ms(), "member": member})

    def committed(self, topic: str, partition: int) -> int | None:
        try:
            with open(self._path(topic, partition), encoding="utf-8") as f:
                return int(json.load(f)["offset"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def all(self, topic: str) -> dict[int, int]:
        out = {}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(os.path.join(self.dir, topic)):
                if name.isdigit():
                    c = self.committed(topic, int(name))
                    if c is not None:
                        out[int(name)] = c
        return dict(sorted(out.items()))


def range_assign(members: list[str], member: str, partitions: int) -> list[int]:
    """The partitions of one topic that ``member`` gets (Kafka's RangeAssignor).

    >>> [range_assign(["a", "b", "c"], m, 7) for m in "abc"]
    [[0, 1, 2], [3, 4], [5, 6]]
    """
    ms = sorted(members)
    if member not in ms:
        return []
    i, m = ms.index(member), len(ms)
    per, extra = divmod(partitions, m)
    start = i * per + min(i, extra)
    return list(range(start, start + per + (1 if i < extra else 0)))


def _try_lock(path: str) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class Membership:
    """One member of a group: its liveness lock and the partitions it owns."""

    def __init__(self, data_dir: str, group: str, member_id: str | None = None) -> None:
        self.dir = group_dir(data_dir, group)
        self.group = group
        self.member_id = member_id or f"{now_ms():013d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._fd: int | None = None
        self.owned: dict[tuple[str, int], int] = {}

    def join(self) -> None:
        root = os.path.join(self.dir, "members")
        os.makedirs(root, exist_ok=True)
        # locked under a hidden name first, so no one sees an unlocked member file
        tmp = os.path.join(root, f".joining-{self.member_id}")
        fd = _try_lock(tmp)
        if fd is None:
            raise RuntimeError(f"member id {self.member_id!r} is already in use")
        os.write(fd, json.dumps({"pid": os.getpid(), "joined_ms": now_ms()}).encode())
        os.rename(tmp, os.path.join(root, self.member_id))
        self._fd = fd

    def live_members(self) -> list[str]:
        """Sorted ids of the members alive now; files of dead members are removed."""
        root = os.path.join(self.dir, "members")
        live = []
        for name in sorted(os.listdir(root)):
            if name.startswith("."):
                continue
            if name == self.member_id:
                live.append(name)
                continue
            path = os.path.join(root, name)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.append(name)  # its owner holds the lock: alive
            else:  # nobody holds it: the member died
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            finally:
                os.close(fd)
        return live

    def try_acquire(self, topic: str, partition: int) -> bool:
        """Take the owner lock of a partition if no other member holds it."""
        if (topic, partition) in self.owned:
            return True
        d = os.path.join(self.dir, "owners", topic)
        os.makedirs(d, exist_ok=True)
        fd = _try_lock(os.path.join(d, f"{partition}.lock"))
        if fd is None:
            return False
        self.owned[(topic, partition)] = fd
        return True

    def release(self, topic: str, partition: int) -> None:
        fd = self.owned.pop((topic, partition), None)
        if fd is not None:
            _unlock(fd)

    def leave(self) -> None:
        for key in list(self.owned):
            self.release(*key)
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, "members", self.member_id))
            _unlock(self._fd)
            self._fd = None

    def info(self) -> dict[str, Any]:
        return {"group": self.group, "member": self.member_id, "owned": sorted(self.owned)}


__all__ = ["Membership", "OffsetStore", "committed_offsets", "forget_topic", "range_assign"]
