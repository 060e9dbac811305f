"""Checkpoint storage and coordination (Flink's asynchronous barrier snapshots).

Layout of a checkpoint directory::

    ckpt/
      chk-000007/                 a complete checkpoint
        _manifest.json            written last; names every file with its SHA-256
        window/0/windows.arrow    one Arrow IPC file per operator subtask and table
      chk-000008.inprogress/      being written (ignored by recovery, cleaned up)

A checkpoint becomes visible to recovery only when its directory is renamed
from ``.inprogress`` after the manifest was written and fsynced. Recovery takes
the newest checkpoint whose manifest parses, whose signature verifies and whose
files all match their checksums; a corrupt or partial one is skipped with a
warning in favour of the previous one.

Snapshots are written asynchronously, as in Flink: at its barrier an operator
only *captures* its state (immutable Polars frames by reference, a RocksDB
checkpoint of hard links for state on disk) and the job goes on; the files are
built, written and fsynced by a background writer (:meth:`CheckpointStorage.ack_subtask`
returns the job to run there). The manifest is written after every file of the
checkpoint, and the sinks commit only after the manifest: the two-phase commit
order is the same as with synchronous writes. A failed write fails the
checkpoint (and the job) instead of leaving it silently incomplete.

The manifest is signed (HMAC-SHA256) with a per-user key kept outside the
checkpoint (``~/.config/sluice/checkpoint.key`` or ``$SLUICE_KEY_FILE``):
state tables may contain pickled Python values (process-function state,
custom aggregations), which are only ever loaded from checkpoints signed with
that key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from sluice.errors import SluiceError
from sluice.plan.partitioning import MAX_PARALLELISM, key_group_expr
from sluice.runtime import faults
from sluice.state.snapshot import Snapshot

log = logging.getLogger("sluice.checkpoint")

FORMAT = 1
KG = "__kg"
_NAME = re.compile(r"^chk-(\d{6,})$")


class CheckpointError(SluiceError):
    """A checkpoint cannot be written, read or restored."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint, as listed by ``sluice checkpoints ls``."""

    checkpoint_id: int
    path: Path
    created_ms: int
    size_bytes: int
    finished: bool
    savepoint: bool
    sources: dict[str, dict[str, Any]]


def _key() -> bytes:
    path = Path(os.environ.get("SLUICE_KEY_FILE") or Path.home() / ".config/sluice/checkpoint.key")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key
    except OSError as e:  # pragma: no cover - unusual permissions
        raise CheckpointError(f"cannot read the checkpoint signing key {path}: {e}") from e


def _sign(body: dict[str, Any]) -> str:
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(_key(), data, hashlib.sha256).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@dataclass
class _Pending:
    checkpoint_id: int
    path: Path
    savepoint: bool
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    acked: set[tuple[str, int]] = field(default_factory=set)


class CheckpointStorage:
    """Writes, lists, verifies and prunes the checkpoints of one directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- writing ----------------------------------------------------------------------
    def begin(self, checkpoint_id: int, *, savepoint: bool = False) -> _Pending:
        path = self.dir / f"chk-{checkpoint_id:06d}.inprogress"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir()
        return _Pending(checkpoint_id, path, savepoint)

    def write_subtask(
        self, pending: _Pending, node: str, subtask: int, parallelism: int, snap: Snapshot
    ) -> None:
        """Record one subtask's acknowledgement and write its files now."""
        self.ack_subtask(pending, node, subtask, parallelism, snap)()

    def ack_subtask(
        self, pending: _Pending, node: str, subtask: int, parallelism: int, snap: Snapshot
    ) -> Callable[[], None]:
        """Record one subtask's acknowledgement (at its barrier, on the job's
        thread); returns the job that writes its files, which may run on another
        thread (it builds the snapshot's deferred tables too). The manifest may
        only be written once every such job has returned."""
        if (node, subtask) in pending.acked:
            snap.discard()
            raise CheckpointError(f"operator {node!r} subtask {subtask} acknowledged twice")
        pending.acked.add((node, subtask))
        entry = pending.nodes.setdefault(
            node, {"parallelism": parallelism, "keys": snap.keys, "subtasks": {}}
        )
        files: dict[str, dict[str, str]] = {"keyed": {}, "tables": {}}
        try:
            # a copy: the sink's transaction must be the one of this barrier
            meta = json.loads(json.dumps(snap.meta))
        except (TypeError, ValueError) as e:
            snap.discard()
            raise CheckpointError(
                f"operator {node!r} subtask {subtask}: snapshot meta is not JSON: {e}"
            ) from e
        entry["subtasks"][str(subtask)] = {"watermark": snap.watermark, "meta": meta, **files}

        def write() -> None:
            self._write_tables(pending, node, subtask, snap, files)

        return write

    def _write_tables(
        self,
        pending: _Pending,
        node: str,
        subtask: int,
        snap: Snapshot,
        files: dict[str, dict[str, str]],
    ) -> None:
        snap.materialize()
        for kind, tables in (("keyed", snap.keyed), ("tables", snap.tables)):
            for name, df in tables.items():
                if kind == "keyed" and df.height == 0:
                    continue  # (other tables may be empty on purpose: a schema)
                if kind == "keyed":
                    df = df.with_columns(key_group_expr(snap.keys).alias(KG))
                rel = f"{_safe(node)}/{subtask}/{_safe(name)}.arrow"
                out = pending.path / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                df.write_ipc(out, compression="lz4")
                with open(out, "rb+") as f:
                    os.fsync(f.fileno())
                pending.files[rel] = {"sha256": _sha256(out), "size": out.stat().st_size}
                files[kind][name] = rel
                faults.point("snapshot")

    def finish(self, pending: _Pending, job: str, *, finished: bool) -> Path:
        body = {
            "format": FORMAT,
            "checkpoint_id": pending.checkpoint_id,
            "job": job,
            "created_ms": int(time.time() * 1000),
            "finished": finished,
            "savepoint": pending.savepoint,
            "nodes": pending.nodes,
            "files": pending.files,
        }
        manifest = {**body, "signature": _sign(body)}
        mpath = pending.path / "_manifest.json"
        with open(mpath, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(pending.path)
        faults.point("manifest")
        final = self.dir / f"chk-{pending.checkpoint_id:06d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(pending.path, final)
        _fsync_dir(self.dir)
        return final

    def abort(self, pending: _Pending) -> None:
        shutil.rmtree(pending.path, ignore_errors=True)

    def retain(self, keep: int) -> None:
        """Delete all but the newest ``keep`` complete checkpoints and stale temp dirs."""
        complete = sorted(self._ids(), reverse=True)
        for cid in complete[keep:]:
            shutil.rmtree(self.dir / f"chk-{cid:06d}", ignore_errors=True)
        for p in self.dir.glob("chk-*.inprogress"):
            shutil.rmtree(p, ignore_errors=True)

    # -- reading ----------------------------------------------------------------------
    def _ids(self) -> list[int]:
        out = []
        for p in self.dir.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_dir():
                out.append(int(m.group(1)))
        return out

    def next_id(self) -> int:
        ids = self._ids() + [
            int(p.name[4:-11]) for p in self.dir.glob("chk-*.inprogress") if p.name[4:-11].isdigit()
        ]
        return max(ids, default=0) + 1

    def latest(self) -> LoadedCheckpoint | None:
        """The newest checkpoint that verifies; corrupt ones are skipped with a warning."""
        for cid in sorted(self._ids(), reverse=True):
            path = self.dir / f"chk-{cid:06d}"
            try:
                return load_checkpoint(path)
            except CheckpointError as e:
                log.warning("skipping checkpoint %s: %s", path, e)
                import warnings

                warnings.warn(f"skipping corrupt checkpoint {path}: {e}", stacklevel=2)
        return None

    def list_one(self, path: Path) -> list[CheckpointInfo]:
        """The info of one checkpoint or savepoint directory (empty if unreadable)."""
        try:
            return [_info(path, _read_manifest(path))]
        except CheckpointError:
            return []

    def list(self) -> list[CheckpointInfo]:
        out = []
        for cid in sorted(self._ids()):
            path = self.dir / f"chk-{cid:06d}"
            try:
                m = _read_manifest(path)
            except CheckpointError:
                continue
            out.append(_info(path, m))
        return out


def _info(path: Path, m: dict[str, Any]) -> CheckpointInfo:
    sources: dict[str, dict[str, Any]] = {}
    for node, entry in m["nodes"].items():
        for st in entry["subtasks"].values():
            splits = st.get("meta", {}).get("splits")
            if splits:
                sources.setdefault(node, {}).update(
                    {sid: s.get("reader", {}) for sid, s in splits.items()}
                )
    size = sum(int(f["size"]) for f in m["files"].values())
    return CheckpointInfo(
        m["checkpoint_id"], path, m["created_ms"], size, m["finished"], m["savepoint"], sources
    )


def _read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / "_manifest.json"
    try:
        m = json.loads(mpath.read_text())
    except FileNotFoundError as e:
        raise CheckpointError("no manifest (the checkpoint was not completed)") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"unreadable manifest: {e}") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CheckpointError(f"unknown manifest format in {mpath}")
    return m


def load_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> LoadedCheckpoint:
    """Read and verify a checkpoint or savepoint directory."""
    path = Path(path)
    m = _read_manifest(path)
    sig = m.pop("signature", None)
    if not trust and (sig is None or not hmac.compare_digest(sig, _sign(m))):
        raise CheckpointError(
            f"the manifest signature of {path} does not verify: it was written by another "
            "user or key, or modified. Restore it only if you trust it (trust=True / --trust)."
        )
    for rel, f in m["files"].items():
        fp = path / rel
        if not fp.exists():
            raise CheckpointError(f"missing state file {rel}")
        if fp.stat().st_size != int(f["size"]) or _sha256(fp) != f["sha256"]:
            raise CheckpointError(f"state file {rel} does not match its checksum")
    return LoadedCheckpoint(path, m)


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint: gives each new subtask its part of the state."""

    path: Path
    manifest: dict[str, Any]

    @property
    def checkpoint_id(self) -> int:
        return int(self.manifest["checkpoint_id"])

    @property
    def finished(self) -> bool:
        return bool(self.manifest["finished"])

    def node_names(self) -> Iterable[str]:
        return self.manifest["nodes"].keys()

    def has(self, node: str) -> bool:
        return node in self.manifest["nodes"]

    def snapshot_for(self, node: str, subtask: int, parallelism: int) -> Snapshot:
        entry = self.manifest["nodes"][node]
        subs = [entry["subtasks"][k] for k in sorted(entry["subtasks"], key=int)]
        snap = Snapshot(keys=list(entry["keys"]))
        snap.watermark = min((int(s["watermark"]) for s in subs), default=snap.watermark)
        snap.meta = {"parts": [s["meta"] for s in subs]}
        names = {n for s in subs for n in s["keyed"]}
        for name in names:
            frames = [
                pl.read_ipc((self.path / s["keyed"][name]).read_bytes())
                for s in subs
                if name in s["keyed"]
            ]
            df = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
            mine = (pl.col(KG) * parallelism // MAX_PARALLELISM) == subtask
            snap.keyed[name] = df.filter(mine).drop(KG)
        names = {n for s in subs for n in s["tables"]}
        for name in names:
            frames = [
                pl.read_ipc((self.path / s["tables"][name]).read_bytes())
                for s in subs
                if name in s["tables"]
            ]
            snap.tables[name] = pl.concat(frames, how="diagonal_relaxed")
        return snap
