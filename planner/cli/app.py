"""The typer application object and the consoles every command shares.

Results go to stdout (``out``); progress, warnings and logs to stderr (``err``),
so ``--json`` output is exactly one JSON document on stdout (DESIGN.md).
"""

from __future__ import annotations

import typer
from rich.console import Console

from profiles.errors import PlanError

app = typer.Typer(
    name="ppplan",
    help="Auto-parallel 3D configuration planner for large-transformer training.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_stdout_probe = Console()
# Piped output (CI logs, files) gets a wide fixed width so tables are not squeezed to 80 columns.
out = Console(highlight=False, width=None if _stdout_probe.is_terminal else 200)
err = Console(stderr=True, highlight=False)


def comma_list(text: str, option: str) -> list[str]:
    """The entries of a comma list option; an empty entry (``1f1b,,gpipe``, a trailing comma)
    is bad input (DESIGN.md, CLI contract)."""
    entries = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not e for e in entries):
        raise PlanError(f"{option} '{text}' has an empty entry: separate values with single commas")
    return entries


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    err.print(f"warning: {message}", markup=False)


@app.callback()
def _root() -> None:
    """Auto-parallel 3D configuration planner for large-transformer training."""
