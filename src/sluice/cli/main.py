"""The ``sluice`` command: ``sluice run APP.py``, ``sluice plan APP.py``.

>>> from typer.testing import CliRunner
>>> CliRunner().invoke(app, ["--version"]).output.strip()
'sluice 0.1.0'
"""

from __future__ import annotations

from typing import Annotated

import typer

import sluice
from sluice.cli.checkpoints import checkpoints_app, savepoint
from sluice.cli.nexmark import nexmark_app
from sluice.cli.plan import plan
from sluice.cli.run import run
from sluice.cli.topic import register as register_log_commands

app = typer.Typer(
    name="sluice",
    help="Sluice: stream processing for Python. Run and inspect dataflow applications.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(run)
app.command()(plan)
app.command()(savepoint)
app.add_typer(checkpoints_app)
app.add_typer(nexmark_app)
register_log_commands(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sluice {sluice.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
) -> None:
    """Sluice: stream processing for Python."""


def main() -> None:
    """Entry point of the ``sluice`` console script."""
    app(prog_name="sluice")


if __name__ == "__main__":
    main()
