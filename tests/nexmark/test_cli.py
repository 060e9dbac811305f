"""``sluice nexmark generate|run|bench`` from the shell."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from sluice.cli.main import app
from sluice.nexmark.generator import NexmarkConfig, generate

runner = CliRunner()


def test_generate_writes_the_generator_tables(tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["nexmark", "generate", "--events", "2000", "--seed", "3", "--out", str(tmp_path)]
    )
    assert r.exit_code == 0, r.output
    t = generate(NexmarkConfig(events=2000, seed=3))
    for kind in ("person", "auction", "bid"):
        assert pl.read_parquet(tmp_path / f"{kind}.parquet").equals(getattr(t, kind))


def test_run_writes_results_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "q2.parquet"
    r = runner.invoke(
        app, ["nexmark", "run", "q2", "--events", "5000", "--out", str(out), "--json"]
    )
    assert r.exit_code == 0, r.output
    m = json.loads(r.output.strip().splitlines()[-1])
    bids = generate(NexmarkConfig(events=5000)).bid
    want = bids.filter(pl.col("auction") % 123 == 0).select("auction", "price")
    got = pl.read_parquet(out)
    assert got.sort(got.columns).equals(want.sort(want.columns))
    assert m["query"] == "q2" and m["events"] == 5000 and m["rows"] == want.height
    assert m["events_per_s"] > 0 and m["peak_rss_mb"] > 0


def test_bench_runs_each_query_in_its_own_process(tmp_path: Path) -> None:
    r = runner.invoke(app, ["nexmark", "bench", "q0", "2,q1", "--events", "3000", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output[r.output.index("[") :])
    assert [x["query"] for x in rows] == ["q0", "q2", "q1"]
    assert rows[0]["rows"] == generate(NexmarkConfig(events=3000)).bid.height


def test_bad_arguments() -> None:
    r = runner.invoke(app, ["nexmark", "run", "q99", "--events", "10"])
    assert r.exit_code == 1 and "unknown query 'q99'" in r.output
    r = runner.invoke(app, ["nexmark", "run", "q1"])
    assert r.exit_code == 1 and "--events" in r.output
