"""``sluice plan APP.py``: print the physical plan of an application's flow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from rich.markup import escape

from sluice.cli.console import console, handle_errors
from sluice.cli.loader import load_app
from sluice.cli.run import APP_ARG, DEBUG_OPT, FLOW_OPT, PARALLELISM_OPT


def plan(
    app: Annotated[Path, APP_ARG],
    parallelism: Annotated[int | None, PARALLELISM_OPT] = None,
    flow: Annotated[str | None, FLOW_OPT] = None,
    debug: Annotated[bool, DEBUG_OPT] = False,
) -> None:
    """Print the physical plan of the flow in APP: operators, parallelism, exchanges.

    ``-chain->`` marks operators fused into their upstream's subtask; ``-hash->``,
    ``-rebalance->``, ``-forward->`` and ``-broadcast->`` are exchanges.
    """
    with handle_errors(debug):
        _, f = load_app(app).flow(flow)
        console.print(escape(f.physical_plan(parallelism).describe()))
