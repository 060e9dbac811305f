"""Operators whose keyed state lives in Polars tables or, with the RocksDB state
backend (``sl.Flow(state_backend="rocksdb")``), in a store over the subtask's own
RocksDB instance: windows, count windows, dedup.

:class:`StoreBackedOperator` holds what they share: opening the backend (when the
job asks for it), the snapshot entry points (a snapshot once the operator has
finished is the one taken then, since the backend is closed) and closing.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from sluice.operators.base import Operator, OperatorContext
from sluice.state.backends import rocksdb_for
from sluice.state.rocksdb import RocksDBStateBackend
from sluice.state.snapshot import Snapshot


class StoreBackedOperator(Operator):
    """An operator with an optional RocksDB store (``self.store``)."""

    #: the subclass's store over ``_backend``; None on the memory backend
    store: Any = None

    def __init__(self) -> None:
        super().__init__()
        self._backend: RocksDBStateBackend | None = None
        self._final: Snapshot | None = None  # the snapshot when it finished
        #: :class:`~sluice.state.rocksdb.RocksDBOptions` for this operator (else the job's).
        self.rocksdb_options: Any = None

    def open(self, ctx: OperatorContext) -> None:
        super().open(ctx)
        backend = rocksdb_for(ctx.config, ctx.name, ctx.subtask, self.rocksdb_options)
        if backend is not None:
            self._backend = backend
            self.store = self._open_store(backend)

    @abstractmethod
    def _open_store(self, backend: RocksDBStateBackend) -> Any:
        """The store of this operator's state over ``backend``."""

    @abstractmethod
    def _snapshot(self, checkpoint_id: int | None) -> Snapshot:
        """The state now; with ``checkpoint_id``, RocksDB state may be read later,
        off the job thread (a :class:`~sluice.state.snapshot.Deferred` table)."""

    def snapshot_state(self) -> Snapshot:
        return self._final if self._final is not None else self._snapshot(None)

    def checkpoint_snapshot(self, checkpoint_id: int) -> Snapshot:
        return self._final if self._final is not None else self._snapshot(checkpoint_id)

    def close(self) -> None:
        if self._backend is None:
            return
        if self.finished and self.ctx is not None and self.ctx.checkpoints is not None:
            self._final = self.snapshot_state()  # still part of later checkpoints
        self._backend.close()
        self._backend = None
        self.store = None
