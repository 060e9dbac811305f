"""The ``sluice`` command, run as users run it: in a subprocess, in a fresh directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from sluice.cli.loader import AppError, load_app

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "sluice"


def sluice(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``sluice ARGS`` (the console script when installed) and capture its output."""
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "sluice.cli.main"]
    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _env() -> dict[str, str]:
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    env.pop("SLUICE_DEBUG", None)
    return env


def write_app(folder: Path, code: str, name: str = "app.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(code))
    return path


SMALL_APP = """
    import sluice as sl

    rows = [
        {"user": "ana", "ts": "2024-05-01T09:00:05Z", "amount": 10.0},
        {"user": "bo", "ts": "2024-05-01T09:00:20Z", "amount": 5.0},
        {"user": "ana", "ts": "2024-05-01T09:00:50Z", "amount": 7.5},
        {"user": "ana", "ts": "2024-05-01T09:01:10Z", "amount": 2.5},
    ]
    flow = sl.Flow("spend")
    (
        flow.source(rows, time="ts")
        .key_by("user")
        .window(sl.windows.tumbling("1m"))
        .agg(n=sl.agg.count(), total=sl.agg.sum("amount"))
        .sink(sl.sinks.jsonl("out/spend.jsonl"))
    )
"""


def test_version(tmp_path: Path) -> None:
    r = sluice("--version", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.strip() == "sluice 0.1.0"


def test_run_writes_the_output_and_prints_a_summary(tmp_path: Path) -> None:
    write_app(tmp_path, SMALL_APP)
    r = sluice("run", "app.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "out/spend.jsonl").read_text().splitlines()]
    got = sorted((r["user"], r["window_start"][11:16], r["n"], r["total"]) for r in rows)
    assert got == [("ana", "09:00", 2, 17.5), ("ana", "09:01", 1, 2.5), ("bo", "09:00", 1, 5.0)]
    out = r.stdout
    assert "finished" in out
    for operator in ("memory", "window", "jsonl"):
        assert operator in out
    assert "out/spend.jsonl" in out  # the outputs table names the file


def test_run_options_parallelism_and_timeout(tmp_path: Path) -> None:
    write_app(tmp_path, SMALL_APP)
    r = sluice("run", "app.py", "--parallelism", "3", "--timeout", "30", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "out/spend.jsonl").read_text().splitlines()) == 3


def test_missing_app_is_a_clear_error(tmp_path: Path) -> None:
    r = sluice("run", "nope.py", cwd=tmp_path)
    assert r.returncode == 1
    assert "nope.py" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_app_without_flow_is_a_clear_error(tmp_path: Path) -> None:
    write_app(tmp_path, "x = 1\n")
    r = sluice("run", "app.py", cwd=tmp_path)
    assert r.returncode == 1
    assert "no sl.Flow" in r.stderr and "Traceback" not in r.stderr


def test_sluice_errors_are_one_message_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    write_app(
        tmp_path,
        """
        import sluice as sl

        flow = sl.Flow("bad")
        rows = [{"ts": "2024-05-01T09:00:00Z"}, {"ts": "yesterday"}]
        flow.source(rows, time="ts", name="events").sink(sl.sinks.collect())
        """,
    )
    r = sluice("run", "app.py", cwd=tmp_path)
    assert r.returncode == 1
    assert "bad record in source 'events'" in r.stderr and "yesterday" in r.stderr
    assert "Traceback" not in r.stderr
    r = sluice("run", "app.py", "--debug", cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "BadRecordError" in r.stderr


def test_exceptions_from_the_app_keep_their_traceback(tmp_path: Path) -> None:
    write_app(tmp_path, "import sluice as sl\n\nraise RuntimeError('broken app')\n")
    r = sluice("run", "app.py", cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "broken app" in r.stderr


TWO_FLOWS = """
    import sluice as sl

    first = sl.Flow("one")
    first.source([{"x": 1}]).sink(sl.sinks.jsonl("one.jsonl"))
    second = sl.Flow("two")
    second.source([{"x": 2}]).sink(sl.sinks.jsonl("two.jsonl"))
"""


def test_several_flows_are_chosen_with_flow(tmp_path: Path) -> None:
    write_app(tmp_path, TWO_FLOWS)
    r = sluice("run", "app.py", cwd=tmp_path)
    assert r.returncode == 1
    assert "first (Flow 'one')" in r.stderr and "second (Flow 'two')" in r.stderr
    assert "--flow" in r.stderr
    r = sluice("run", "app.py", "--flow", "second", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "two.jsonl").exists() and not (tmp_path / "one.jsonl").exists()


def test_flow_is_picked_by_variable_or_flow_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [*sys.path])  # load_app puts the app's folder first
    app = load_app(write_app(tmp_path, TWO_FLOWS, name="two_flows.py"))
    assert sorted(app.flows) == ["first", "second"]
    assert app.flow("first")[0] == "first"
    assert app.flow("two")[0] == "second"
    with pytest.raises(AppError, match=r"no flow 'three'.*first \(Flow 'one'\)"):
        app.flow("three")
    with pytest.raises(AppError, match="several flows"):
        app.flow()


def test_main_block_of_the_app_does_not_run(tmp_path: Path) -> None:
    write_app(
        tmp_path,
        SMALL_APP
        + """
    if __name__ == "__main__":
        raise SystemExit("the CLI must not run this")
    """,
    )
    r = sluice("run", "app.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_plan_prints_the_operators(tmp_path: Path) -> None:
    write_app(tmp_path, SMALL_APP)
    r = sluice("plan", "app.py", "-p", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "job 'spend'"
    assert "  memory x4" in lines
    assert "  window x4  <= memory -hash->" in lines
    assert "jsonl x1  <= window -rebalance->" in r.stdout  # a single-file sink runs once
    assert not (tmp_path / "out").exists()  # plan does not run the job


UNBOUNDED_APP = """
    import polars as pl

    import sluice as sl


    def ticks(start: int, n: int) -> pl.DataFrame:
        i = pl.int_range(start, start + n, eager=True)
        return pl.DataFrame({"i": i}).with_columns(payload=pl.format("tick-{}", "i"))


    flow = sl.Flow("forever")
    flow.source(sl.sources.generator(ticks, rate=2_000)).filter(sl.col("i") % 2 == 0).sink(
        sl.sinks.jsonl("out/ticks.jsonl")
    )
"""


def test_timeout_stops_an_unbounded_job_with_exit_code_0(tmp_path: Path) -> None:
    write_app(tmp_path, UNBOUNDED_APP)
    r = sluice("run", "app.py", "--timeout", "0.5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "stopped after the --timeout of 0.5 s" in r.stdout
    assert (tmp_path / "out/ticks.jsonl").read_text().endswith("\n")


def test_ctrl_c_stops_the_job_and_flushes_the_sinks(tmp_path: Path) -> None:
    write_app(tmp_path, UNBOUNDED_APP)
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "sluice.cli.main"]
    proc = subprocess.Popen(
        [*cmd, "run", "app.py"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    output = tmp_path / "out/ticks.jsonl"  # created when the job starts
    try:
        deadline = time.monotonic() + 20
        while not output.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.05)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopped" in out + err
    text = output.read_text()
    assert text.endswith("\n")  # flushed, no half-written line
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) > 100  # ~1.5 s at 1,000 kept rows per second
    assert [r["i"] for r in rows] == list(range(0, 2 * len(rows), 2))
    assert rows[-1]["payload"] == f"tick-{rows[-1]['i']}"


def test_the_demo_matches_a_batch_computation(tmp_path: Path) -> None:
    r = sluice("run", str(ROOT / "examples/clicks.py"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "finished" in r.stdout and "clicks_per_minute" in r.stdout
    demo = tmp_path / "demo-out"
    clicks = pl.read_ndjson(demo / "clicks.jsonl")
    assert clicks.height == 200_000
    late_file = demo / "late_clicks.jsonl"
    late = pl.read_ndjson(late_file) if late_file.stat().st_size else pl.DataFrame()
    assert 0 < late.height < 1_000  # a few very late clicks, nothing else
    got = pl.read_parquet(demo / "clicks_per_minute")
    # late-but-allowed clicks re-fire their window with a larger count: keep the latest
    final = got.sort("n").group_by("user", "window_start", "window_end").last()
    assert got.height > final.height  # some windows did fire again
    want = (
        clicks.filter(pl.col("kind") == "click")
        .join(late.select("event_id"), on="event_id", how="anti")
        .with_columns(
            pl.col("ts")
            .str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_unit="ms")
            .dt.truncate("1m")
            .alias("window_start")
        )
        .group_by("user", "window_start")
        .agg(n=pl.len().cast(pl.Int64), spent=pl.col("amount").sum())
        .with_columns(window_end=pl.col("window_start") + pl.duration(minutes=1))
    )
    key = ["user", "window_start"]
    assert final.select(want.columns).sort(key).equals(want.sort(key))
    # a second run reuses the generated input and replaces the results
    r = sluice("run", str(ROOT / "examples/clicks.py"), "--preview", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(demo / "clicks_per_minute").height == got.height
