"""The typer application object and the consoles every command shares.

Results go to stdout (``out``); progress, warnings and logs to stderr (``err``),
so ``--json`` output is exactly one JSON document on stdout (DESIGN.md). Piped
output (CI logs, files) is laid out for 120 columns; a terminal uses its own width.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from profiles.errors import PlanError

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


def comma_list(text: str, option: str) -> list[str]:
    """The entries of a comma list option; an empty entry (``1f1b,,gpipe``, a trailing comma)
    is bad input (DESIGN.md, CLI contract)."""
    entries = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not e for e in entries):
        raise PlanError(f"{option} '{text}' has an empty entry: separate values with single commas")
    return entries


def output_path(text: str | Path) -> Path:
    """An output file option's value (``typer.Option(parser=output_path, metavar="<path>")``): a name ending in a path
    separator names a folder, and ``pathlib`` would drop the separator and write a file of the folder's
    name, so it is bad input here, where the text is still whole."""
    text = str(text)  # a default given as a Path
    if text.endswith(("/", os.sep)) or os.path.basename(text) in (".", ".."):
        raise typer.BadParameter(f"'{text}' names a folder: give a file name")
    return Path(text)


def small_int(text: str) -> int:
    """An integer option entry of at most 9 digits (a layer count, a TP degree): longer is a ``ValueError`` here,
    before ``int`` meets a number of more digits than Python converts."""
    if len(text.strip().lstrip("+-")) > 9:
        raise ValueError(f"more than 9 digits: {text[:12]}...")
    return int(text)


def output_dir(text: str | Path) -> Path:
    """A folder option's value (``--out-dir``): an empty name is no folder (``pathlib`` would read it as '.')."""
    if not str(text).strip():
        raise typer.BadParameter("an empty name: give a folder")
    return Path(text)


def output_option(default: Any, flag: str, help: str) -> Any:
    """A typer option naming a file a command writes (read whole by ``output_path``)."""
    return typer.Option(default, flag, help=help, parser=output_path, metavar="<path>")


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    err.print(f"warning: {message}", markup=False, soft_wrap=True)


_notes: list[str] = []


def note(message: str) -> None:
    """A one-line statement of an assumption, printed on stderr once the command has run (``flush_notes``): a
    command that refuses its input prints its one ``error:`` line alone (DESIGN.md, bad input)."""
    _notes.append(message)


def flush_notes(print_them: bool) -> None:
    """Print the notes of the command that just ran (``print_them``: it did not refuse its input), then forget them."""
    if print_them:
        for message in _notes:
            err.print(f"note: {message}", markup=False, soft_wrap=True)
    _notes.clear()


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
