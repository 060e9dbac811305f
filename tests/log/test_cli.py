"""``sluice topic ...``, ``sluice produce``, ``sluice consume``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from sluice.cli.topic import log_app
from sluice.log import Log

from .procs import python


def run(*args: str, data: Path, input: str | None = None):
    return CliRunner().invoke(log_app, [*args, "--data-dir", str(data)], input=input)


def test_topic_lifecycle(tmp_path: Path) -> None:
    r = run(
        "topic", "create", "orders", "--partitions", "4", "--retention", "7d",
        "--retention-bytes", "10GB", "--compression", "zstd", data=tmp_path,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "4 partitions" in r.output and "zstd" in r.output
    assert run("topic", "create", "orders", data=tmp_path).exit_code == 1
    assert run("topic", "create", "kv", "--compact", data=tmp_path).exit_code == 0
    assert run("topic", "list", data=tmp_path).output.split() == ["kv", "orders"]
    desc = run("topic", "describe", "orders", data=tmp_path).output
    assert (
        "retention: 7d" in desc and "retention_bytes: 10GB" in desc and "compression: zstd" in desc
    )
    assert "cleanup_policy: compact" in run("topic", "describe", "kv", data=tmp_path).output
    r = run("topic", "alter", "orders", "--retention", "3d", "--partitions", "6", data=tmp_path)
    assert r.exit_code == 0, r.output
    assert Log(tmp_path).config("orders").partitions == 6
    r = run("topic", "alter", "orders", "--partitions", "2", data=tmp_path)
    assert r.exit_code == 1 and "only grow" in r.output
    assert run("topic", "delete", "kv", data=tmp_path).exit_code == 0
    assert run("topic", "list", data=tmp_path).output.split() == ["orders"]
    r = run("topic", "describe", "kv", data=tmp_path)
    assert r.exit_code == 1 and "does not exist" in r.output


def test_produce_consume_with_groups_and_stats(tmp_path: Path) -> None:
    run("topic", "create", "orders", "--partitions", "2", data=tmp_path)
    lines = [json.dumps({"user": u, "n": i}) for i, u in enumerate(["ana", "bo", "ana", "cy"])]
    r = run(
        "produce", "orders", "--key-field", "user", data=tmp_path, input="\n".join(lines) + "\n"
    )
    assert r.exit_code == 0, r.output
    out = run("consume", "orders", "--group", "g1", data=tmp_path).output.splitlines()
    assert sorted(out) == sorted(lines)
    assert run("consume", "orders", "--group", "g1", data=tmp_path).output == ""  # committed
    r = run(
        "consume", "orders", "--from", "1", "--partition", "0", "--format", "json", data=tmp_path
    )
    recs = [json.loads(x) for x in r.output.splitlines()]
    assert all(x["partition"] == 0 and x["offset"] >= 1 for x in recs)
    stats = json.loads(run("topic", "stats", "orders", "--json", data=tmp_path).output)
    assert sum(p["records"] for p in stats) == 4
    assert all(p["groups"]["g1"]["lag"] == 0 for p in stats)
    table = run("topic", "stats", "orders", data=tmp_path).output
    assert "g1 committed / lag" in table and "4 records" in table


def test_bad_input_gives_one_clear_error(tmp_path: Path) -> None:
    r = run("produce", "missing", data=tmp_path, input="{}\n")
    assert r.exit_code == 1 and "topic 'missing' does not exist" in r.output
    run("topic", "create", "t", data=tmp_path)
    r = run("produce", "t", "--key-field", "id", data=tmp_path, input='{"id": 1}\nnot json\n')
    assert r.exit_code == 1 and "line 2" in r.output
    assert Log(tmp_path).offsets("t", 0) == (0, 0)
    r = run("produce", "t", "--partition", "3", data=tmp_path, input="{}\n")
    assert r.exit_code == 1 and "no partition 3" in r.output


def test_consume_follow_tails_like_tail_f(tmp_path: Path) -> None:
    Log(tmp_path).create_topic("t")
    proc = python(
        "from sluice.cli.topic import log_app; log_app()",
        "consume", "t", "--follow", "--max-messages", "2", "--data-dir", str(tmp_path),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(0.5)
    with Log(tmp_path).producer() as p:
        p.send("t", b"first")
        p.send("t", b"second")
    out, _ = proc.communicate(timeout=30)
    assert out.splitlines() == ["first", "second"]
    assert proc.returncode == 0, sys.stderr
