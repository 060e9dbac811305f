"""``sluice checkpoints ls DIR`` and ``sluice savepoint DIR``."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from sluice.cli.console import console, handle_errors
from sluice.cli.summary import human_size
from sluice.errors import SluiceError
from sluice.runtime.checkpoint import CheckpointStorage

checkpoints_app = typer.Typer(
    name="checkpoints", help="Inspect checkpoint directories.", no_args_is_help=True
)
DIR_ARG = typer.Argument(help="The job's checkpoint directory (--checkpoint-dir).")


@checkpoints_app.command("ls")
def ls(directory: Annotated[Path, DIR_ARG]) -> None:
    """List the complete checkpoints with id, time, size and source offsets."""
    with handle_errors(False):
        if not directory.is_dir():
            raise SluiceError(f"{directory} is not a directory")
        if (directory / "_manifest.json").exists():  # one checkpoint or savepoint
            infos = CheckpointStorage(directory.parent).list_one(directory)
        else:
            infos = CheckpointStorage(directory).list()
        if not infos:
            console.print(f"no complete checkpoints in {directory}")
            return
        table = Table("id", "time (UTC)", "size", "kind", "source positions")
        for i in infos:
            when = datetime.fromtimestamp(i.created_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
            kind = "savepoint" if i.savepoint else "final" if i.finished else "checkpoint"
            pos = "; ".join(
                escape(f"{node}[{sid}]={json.dumps(p, separators=(',', ':'))}")
                for node, splits in i.sources.items()
                for sid, p in splits.items()
            )
            table.add_row(str(i.checkpoint_id), when, human_size(i.size_bytes), kind, pos or "-")
        console.print(table)


def savepoint(
    directory: Annotated[Path, DIR_ARG],
    to: Annotated[Path, typer.Option("--to", help="Where to write the savepoint.")],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 60.0,
) -> None:
    """Ask the job running with checkpoint directory DIR for a savepoint."""
    with handle_errors(False):
        if not directory.is_dir():
            raise SluiceError(f"{directory} is not a checkpoint directory")
        rid = uuid.uuid4().hex
        req = directory / f"_savepoint-{rid}.request"
        tmp = req.with_suffix(".tmp")
        tmp.write_text(json.dumps({"target": str(to.resolve())}))
        tmp.rename(req)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for suffix in (".done", ".failed"):
                ans = req.with_suffix(suffix)
                if ans.exists():
                    body = json.loads(ans.read_text())
                    ans.unlink()
                    if suffix == ".failed":
                        raise SluiceError(f"savepoint failed: {body['error']}")
                    console.print(f"savepoint written to {body['path']}")
                    return
            time.sleep(0.05)
        req.unlink(missing_ok=True)
        raise SluiceError(
            f"no job answered within {timeout:g} s: is a job running with --checkpoint-dir {directory}?"
        )
