"""Column names of the window operator's state table, shared by its state paths.

One row per (key, window) holds the partial aggregates plus ``__ws`` and
``__we`` (window start and end, ms), ``__dirty`` (changed since last emitted)
and ``__fired`` (final firing done); session partials carry ``__seq`` (the
batch they came from, for arrival order). Pane rows carry ``__upd`` (version
of their last update) and pane snapshots ``__fw`` (the fired watermark).
"""

from __future__ import annotations

WS, WE, DIRTY, FIRED, SEQ = "__ws", "__we", "__dirty", "__fired", "__seq"
UPD, FW = "__upd", "__fw"
