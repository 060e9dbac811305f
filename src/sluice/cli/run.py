"""``sluice run APP.py``: import an application, run its flow, print a summary."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.text import Text

from sluice.api.flow import Flow
from sluice.cli import summary
from sluice.cli.console import EXIT_INTERRUPTED, console, handle_errors
from sluice.cli.loader import load_app
from sluice.runtime.local import JobResult

APP_ARG = typer.Argument(
    help="Python file that defines a module-level sl.Flow.", show_default=False
)
FLOW_OPT = typer.Option(
    "--flow", help="Which flow to use when the file defines several (variable or flow name)."
)
PARALLELISM_OPT = typer.Option(
    "--parallelism", "-p", min=1, help="Default parallelism of the operators."
)
DEBUG_OPT = typer.Option("--debug", envvar="SLUICE_DEBUG", help="Show full tracebacks on errors.")


def run(
    app: Annotated[Path, APP_ARG],
    parallelism: Annotated[int | None, PARALLELISM_OPT] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="Stop after this many seconds (sinks are flushed)."),
    ] = None,
    flow: Annotated[str | None, FLOW_OPT] = None,
    preview: Annotated[
        int, typer.Option("--preview", min=0, help="Rows of each file output to show (0: none).")
    ] = 5,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint-dir",
            help="Checkpoint into this directory and resume from its newest checkpoint.",
        ),
    ] = None,
    checkpoint_interval: Annotated[
        str, typer.Option("--checkpoint-interval", help="Time between checkpoints, e.g. 1s.")
    ] = "10s",
    from_savepoint: Annotated[
        Path | None,
        typer.Option("--from-savepoint", help="Start from this checkpoint or savepoint directory."),
    ] = None,
    trust: Annotated[
        bool,
        typer.Option("--trust", help="Restore a savepoint signed by another user or key."),
    ] = False,
    debug: Annotated[bool, DEBUG_OPT] = False,
) -> None:
    """Run the flow defined in APP until its input ends, the timeout passes or Ctrl-C.

    Ctrl-C stops the job cleanly: sources stop, sinks are flushed and closed, and
    the command exits with code 130.
    """
    with handle_errors(debug):
        loaded = load_app(app)
        var, f = loaded.flow(flow)
        plan = f.physical_plan(parallelism)
        console.print(
            Text.assemble(
                ("running ", "bold"),
                (repr(f.name), "bold cyan"),
                f" ({var} in {app}); Ctrl-C stops it",
            ),
            soft_wrap=True,
        )
        options = {
            "checkpoint_dir": checkpoint_dir,
            "checkpoint_interval": checkpoint_interval,
            "from_savepoint": from_savepoint,
            "trust_checkpoint": trust,
        }
        result, interrupted = _run_interruptible(f, parallelism, timeout, options)
        if result.restored_from is not None:
            console.print(f"resumed from checkpoint {result.restored_from}")
        if checkpoint_dir is not None:
            console.print(
                f"delivery guarantee: [bold]{result.guarantee}[/]; "
                f"{len(result.checkpoints)} checkpoints in {checkpoint_dir}"
            )
        if interrupted:
            headline = Text.assemble(
                ("■ stopped", "bold yellow"),
                f" by Ctrl-C after {result.elapsed_s:.2f} s; sinks were flushed",
            )
        elif result.stopped:
            why = (
                f"after the --timeout of {timeout:g} s"
                if timeout is not None and result.elapsed_s >= timeout
                else "before the end of its input (SIGTERM or flow.stop())"
            )
            headline = Text.assemble(("■ stopped", "bold yellow"), f" {why}; sinks were flushed")
        else:
            headline = Text.assemble(("✔ finished", "bold green"), f" in {result.elapsed_s:.2f} s")
        summary.render(console, plan, result, headline=headline, preview_rows=preview)
        if interrupted:
            raise typer.Exit(EXIT_INTERRUPTED)


def _run_interruptible(
    flow: Flow, parallelism: int | None, timeout: float | None, options: dict[str, Any]
) -> tuple[JobResult, bool]:
    """Run ``flow``; the first Ctrl-C asks it to stop at the next turn of its loop
    (so no batch is cut in half), a second one interrupts at once."""
    interrupted = False
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        return flow.run(parallelism=parallelism, timeout=timeout, **options), False

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        running = flow.running
        if interrupted or not running:
            # not running yet, or a second Ctrl-C: interrupt where we are
            interrupted = True
            raise KeyboardInterrupt
        interrupted = True
        console.print("[yellow]stopping (Ctrl-C again to force)...[/]")
        flow.stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = flow.run(parallelism=parallelism, timeout=timeout, **options)
    finally:
        signal.signal(signal.SIGINT, previous)
    return result, interrupted
