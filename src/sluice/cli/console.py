"""Consoles and error reporting shared by the sub-commands."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from sluice.errors import SluiceError

#: Exit code after Ctrl-C, as for any program stopped by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@contextmanager
def handle_errors(debug: bool) -> Iterator[None]:
    """Turn errors into one red message and an exit code.

    A :class:`SluiceError` (bad input, bad configuration, a failed operator) is
    the user's to fix: one message, no traceback unless ``debug``. Any other
    exception comes from the application's own code and keeps its traceback.
    Ctrl-C outside the job's loop (while importing, for example) exits with 130.
    """
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err_console.print("[bold yellow]stopped[/] by Ctrl-C")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except SluiceError as e:
        if debug:
            err_console.print(escape(traceback.format_exc()), style="dim", soft_wrap=True)
        err_console.print(f"[bold red]error:[/] [red]{escape(str(e))}[/]", soft_wrap=True)
        if not debug:
            err_console.print("[dim](run with --debug for the full traceback)[/]")
        raise typer.Exit(1) from None
    except Exception as e:
        err_console.print(escape(traceback.format_exc()), style="dim", soft_wrap=True)
        err_console.print(
            f"[bold red]error:[/] [red]{type(e).__name__}: {escape(str(e))}[/]", soft_wrap=True
        )
        raise typer.Exit(1) from None
