"""Subprocess helpers of the crash and multi-process tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def python(code: str, *args: str, **popen: object) -> subprocess.Popen[str]:
    """Start ``python -c code args...`` with this test run's import path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        text=True,
        **popen,
    )


#: Appends batches of numbered records forever and prints the last number of each
#: batch once ``send_batch`` returned (acknowledged, fsync'd with fsync=always).
PRODUCER = """
import sys
import polars as pl
from sluice.log import Log

data_dir, topic, fsync, batch, name = sys.argv[1:6]
batch = int(batch)
log = Log(data_dir)
p = log.producer(fsync=fsync)
i = 0
while True:
    ids = list(range(i, i + batch))
    df = pl.DataFrame({"v": [f"{name}-{j:09d}-" + "x" * 80 for j in ids], "k": [str(j % 7) for j in ids]})
    p.send_batch(topic, df, value="v", key="k")
    i += batch
    print(i - 1, flush=True)
"""
