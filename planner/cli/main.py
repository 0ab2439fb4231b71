"""``ppplan`` entry point: registers the commands and maps errors to exit codes.

Exit codes (DESIGN.md): 0 success; 1 no feasible plan or a failed run; 2 bad
input, reported as one ``error:`` line on stderr with no traceback; 130 for
Ctrl-C, also while the commands are still being imported (this module imports
nothing heavy at module level for that reason).
"""

from __future__ import annotations

import sys


def _error(message: str, code: int) -> int:
    first = str(message).strip().splitlines()[0] if str(message).strip() else "invalid input"
    print(f"error: {first}", file=sys.stderr)
    return code


def _command():
    """The click command of the typer app, with every command registered (imports them)."""
    import typer.main

    # Each module registers its commands on ``app`` when imported.
    from planner.cli import (
        explain,  # noqa: F401  registers explain, schema
        launch,  # noqa: F401  registers launch, compare
        profile,  # noqa: F401  registers profile, profile-comm
        search,  # noqa: F401  registers search, evaluate
        simulate,  # noqa: F401  registers simulate
        trust,  # noqa: F401  registers calibrate, regress, tune
        validate,  # noqa: F401  registers validate
    )
    from planner.cli.app import app

    return typer.main.get_command(app)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (used by ``main`` and the tests)."""
    try:
        from profiles.errors import InfeasibleError, PlanError

        command = _command()
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    try:
        result = command.main(args=argv, prog_name="ppplan", standalone_mode=False)
    except PlanError as exc:
        return _error(str(exc), 2)
    except InfeasibleError as exc:
        return _error(str(exc), 1)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except Exception as exc:  # typer's vendored click signals, matched by shape
        kind = type(exc).__name__
        if kind == "Exit":
            return int(getattr(exc, "exit_code", 0))
        if kind == "Abort":
            return _error("aborted", 130)
        if hasattr(exc, "format_message"):
            return _error(exc.format_message(), 2)
        raise
    return int(result) if isinstance(result, int) else 0


def main() -> None:
    try:
        code = run(sys.argv[1:])
    except KeyboardInterrupt:
        code = _error("interrupted", 130)
    sys.exit(code)
