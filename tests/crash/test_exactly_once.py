"""Exactly-once under SIGKILL: kill the job at random moments (and at chosen
points inside checkpoints and commits), restart it with the same checkpoint
directory until it finishes, and compare the committed output with a run that
never failed: no row lost, none duplicated.

CI runs >= 20 random kills (SLUICE_SLOW_SAMPLE keeps it bounded); the slow
mode runs 100.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

JOB = Path(__file__).with_name("job.py")
ROOT = Path(__file__).parents[2]


def _write_input(src: Path, seed: int = 5) -> None:
    rng = random.Random(seed)
    src.mkdir()
    i = 0
    for f in range(3):
        lines = []
        t = f * 500
        for _ in range(2500):
            t += rng.randint(0, 12)
            ts = t - (rng.randint(2500, 4000) if rng.random() < 0.02 else rng.randint(0, 1500))
            lines.append(
                json.dumps(
                    {
                        "i": i,
                        "user": f"u{rng.randint(0, 30)}",
                        "amount": rng.randint(1, 100),
                        "ts": ts,
                    }
                )
            )
            i += 1
        (src / f"events-{f}.jsonl").write_text("\n".join(lines) + "\n")


def _start(src: Path, out: Path, ckpt: Path, parallelism: int, fault: str | None = None):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("SLUICE_FAULT", None)
    if fault:
        env["SLUICE_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, str(JOB), str(src), str(out), str(ckpt), str(parallelism)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _committed(out: Path, what: str) -> pl.DataFrame:
    files = sorted((out / what).glob("part-*.jsonl"))
    frames = [pl.read_ndjson(f) for f in files if f.stat().st_size]
    return pl.concat(frames) if frames else pl.DataFrame()


def _hidden(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.is_file()]


def _same(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    if a.height != b.height:
        return False
    if a.height == 0:
        return True
    cols = sorted(a.columns)
    return a.select(cols).sort(cols).equals(b.select(cols).sort(cols))


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    src = base / "src"
    _write_input(src)
    ref = base / "ref"
    p = _start(src, ref, base / "ref-ckpt", 2)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
    return src, _committed(ref, "results"), _committed(ref, "late")


def _episode(src: Path, work: Path, rng: random.Random, faults: list[str], kill: bool) -> int:
    """Run the job until it finishes, killing it at random moments (``kill``)
    and once at each fault point; return the number of kills."""
    out, ckpt = work / "out", work / "ckpt"
    kills = 0
    plan = [*faults]
    for _ in range(200):
        fault = plan.pop(0) if plan else None
        p = _start(src, out, ckpt, 2, fault)
        if fault is None and kill:
            # time the kill from the end of the imports, which take most of a
            # second and more on a loaded machine: killing during them would
            # make no progress, and a run of such kills never finishes
            assert p.stdout is not None
            p.stdout.readline()  # "ready" (or EOF if the job died first)
            try:
                p.wait(timeout=rng.uniform(0.05, 0.8))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills += 1
                continue
        _, err = p.communicate(timeout=120)
        if p.returncode == -signal.SIGKILL and fault is not None:
            kills += 1
            continue
        assert p.returncode == 0, err.decode()
        if not plan:
            return kills
    raise AssertionError("the job never finished")


def _check(work: Path, want_results: pl.DataFrame, want_late: pl.DataFrame) -> None:
    out = work / "out"
    assert _same(_committed(out, "results"), want_results)
    assert _same(_committed(out, "late"), want_late)
    assert _hidden(out) == [], "uncommitted files were left behind"


@pytest.mark.slow
def test_random_sigkills_keep_output_exactly_once(workload, tmp_path, slow_sample):
    src, want_results, want_late = workload
    assert want_results.height > 100 and want_late.height > 0
    target = 20 if slow_sample else 100
    rng = random.Random(1)
    kills = episode = 0
    while kills < target:
        work = tmp_path / f"episode-{episode}"
        kills += _episode(src, work, rng, [], kill=True)
        _check(work, want_results, want_late)
        episode += 1


def test_kill_inside_checkpoint_and_commit_keeps_output_exactly_once(workload, tmp_path):
    src, want_results, want_late = workload
    faults = ["snapshot:3", "manifest:2", "commit:1", "commit:3", "snapshot:12"]
    kills = _episode(src, tmp_path, random.Random(2), faults, kill=False)
    assert kills >= 4
    _check(tmp_path, want_results, want_late)
