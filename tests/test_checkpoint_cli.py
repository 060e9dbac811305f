"""Savepoints and the checkpoint commands: `sluice run --checkpoint-dir`,
`sluice savepoint`, `sluice checkpoints ls`, `flow.savepoint()`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl

import sluice as sl

ROOT = Path(__file__).parents[1]

APP = """
import time
import polars as pl
import sluice as sl


def rows(start: int, n: int) -> pl.DataFrame:
    return pl.DataFrame({"i": pl.int_range(start, start + n, eager=True)}).with_columns(
        ts=pl.col("i") * 10, k=pl.col("i") % 5
    )


flow = sl.Flow("app")
(
    flow.source(sl.sources.generator(rows, rate=2000, count=20_000), time="ts")
    .key_by("k")
    .window(sl.windows.tumbling("1s"))
    .agg(n=sl.agg.count())
    .sink(sl.sinks.jsonl("out"))
)
"""


def _sluice(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "300"}
    return subprocess.Popen(
        [sys.executable, "-m", "sluice.cli.main", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_savepoint_from_another_terminal_then_resume_from_it(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    job = _sluice(
        "run", "app.py", "--checkpoint-dir", "ckpt", "--checkpoint-interval", "200ms", cwd=tmp_path
    )
    time.sleep(2.5)
    sp = _sluice("savepoint", "ckpt", "--to", "sp1", "--timeout", "20", cwd=tmp_path)
    out, _ = sp.communicate(timeout=30)
    assert sp.returncode == 0, out
    assert "savepoint written" in out
    job.terminate()  # SIGTERM: a clean stop with a final checkpoint
    job.communicate(timeout=30)
    manifest = json.loads((tmp_path / "sp1" / "_manifest.json").read_text())
    assert manifest["savepoint"] is True

    ls = _sluice("checkpoints", "ls", "ckpt", cwd=tmp_path)
    out, _ = ls.communicate(timeout=30)
    assert ls.returncode == 0 and "checkpoint" in out and "[gen-0]" in out
    ls = _sluice("checkpoints", "ls", "sp1", cwd=tmp_path)
    out, _ = ls.communicate(timeout=30)
    assert ls.returncode == 0 and "savepoint" in out and '"emitted"' in out

    # resume from the savepoint in a fresh output directory: the rows counted
    # before the savepoint are not recomputed
    (tmp_path / "app2.py").write_text(APP.replace('"out"', '"out2"'))
    res = _sluice(
        "run", "app2.py", "--from-savepoint", "sp1", "--checkpoint-dir", "ckpt2", cwd=tmp_path
    )
    out, _ = res.communicate(timeout=60)
    assert res.returncode == 0, out
    assert "resumed from checkpoint" in out
    after = pl.read_ndjson(sorted((tmp_path / "out2").glob("part-*.jsonl")))
    assert 0 < after["n"].sum() < 20_000


def test_flow_savepoint_from_a_thread(tmp_path):
    def rows(start: int, n: int) -> pl.DataFrame:
        return pl.DataFrame({"i": pl.int_range(start, start + n, eager=True)}).with_columns(
            ts=pl.col("i")
        )

    flow = sl.Flow("sp")
    flow.source(sl.sources.generator(rows, rate=5000), time="ts").sink(
        sl.sinks.jsonl(str(tmp_path / "o"))
    )
    result: dict[str, Path] = {}

    def take() -> None:
        time.sleep(0.5)
        result["path"] = flow.savepoint(tmp_path / "sp")
        flow.stop()

    t = threading.Thread(target=take)
    t.start()
    res = flow.run(checkpoint_dir=tmp_path / "ck", timeout=20)
    t.join()
    assert res.stopped and result["path"] == tmp_path / "sp"
    assert (tmp_path / "sp" / "_manifest.json").exists()


def test_savepoint_without_a_running_job_is_a_clear_error(tmp_path):
    (tmp_path / "ckpt").mkdir()
    p = _sluice("savepoint", "ckpt", "--to", "sp", "--timeout", "0.3", cwd=tmp_path)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 1 and "no job answered" in out
