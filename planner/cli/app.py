"""The typer application object and the consoles every command shares.

Results go to stdout (``out``); progress, warnings and logs to stderr (``err``),
so ``--json`` output is exactly one JSON document on stdout (DESIGN.md). Piped
output (CI logs, files) is laid out for 120 columns; a terminal uses its own width.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Optional

import typer
from rich.console import Console

PIPED_WIDTH = 120  # columns of piped human output (the readability target for logs)

app = typer.Typer(
    name="ppplan",
    help="Auto-parallel 3D configuration planner for large-transformer training.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_stdout_probe = Console()
out = Console(highlight=False, width=None if _stdout_probe.is_terminal else PIPED_WIDTH)
err = Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    err.print(f"warning: {message}", markup=False, soft_wrap=True)


def note(message: str) -> None:
    """A one-line statement of an assumption on stderr."""
    err.print(f"note: {message}", markup=False, soft_wrap=True)


def ppplan_version() -> str:
    try:
        return version("ppplan")
    except PackageNotFoundError:  # a checkout used without `pip install -e .`
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        print(f"ppplan {ppplan_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Auto-parallel 3D configuration planner for large-transformer training."""
