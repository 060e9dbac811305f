"""Fault injection for crash tests: ``SLUICE_FAULT=<point>:<n>`` kills the
process with SIGKILL the ``n``-th time execution reaches ``<point>``.

Points: ``snapshot`` (an operator state file was just written),
``manifest`` (the manifest is written, the checkpoint not yet renamed
visible), ``commit`` (between the commits of two sinks / after a checkpoint
completed, before its sinks were committed). Unset (the default) costs one
dictionary lookup per checkpoint step.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("SLUICE_FAULT")
    if not spec:
        return
    where, _, nth = spec.partition(":")
    if where != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
