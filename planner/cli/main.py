"""``ppplan`` entry point: registers the commands and maps errors to exit codes.

Exit codes (DESIGN.md): 0 success; 1 no feasible plan or a failed run; 2 bad
input, reported as one ``error:`` line on stderr with no traceback; 130 for
Ctrl-C, also while the commands are still being imported (this module imports
nothing heavy at module level for that reason).
"""

from __future__ import annotations

import os
import sys


def _error(message: str, code: int) -> int:
    first = str(message).strip().splitlines()[0] if str(message).strip() else "invalid input"
    print(f"error: {first}", file=sys.stderr)
    return code


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C, also where the interpreter wrapped it in another error.

    A KeyboardInterrupt raised inside ``__set_name__`` while a class is built (pydantic's
    model construction) surfaces as ``RuntimeError("Error calling __set_name__ ...")`` with
    the interrupt as its cause; the chain is followed through ``__cause__`` and ``__context__``
    (not past ``raise ... from None``).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        if current.__cause__ is not None:
            current = current.__cause__
        else:  # ``raise ... from None`` says the context is handled (launch's JobInterrupted -> Exit)
            current = None if current.__suppress_context__ else current.__context__
    return False


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


def _invoke(command, args: list[str]) -> object:
    """Parse ``args`` and run the command, letting every exception reach ``run``.

    Not ``command.main``: typer (0.29) turns a KeyboardInterrupt inside a command into a bare
    return of 130 with nothing printed, which would lose the ``error: interrupted`` line.
    """
    with command.make_context("ppplan", args) as ctx:
        return command.invoke(ctx)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (used by ``main`` and the tests)."""
    try:
        from profiles.errors import InfeasibleError, PlanError

        command = _command()
    except BaseException as exc:
        if _interrupted(exc):
            return _error("interrupted", 130)
        raise
    from planner.cli.app import flush_notes

    ran = False  # the command did not refuse its input: its notes (assumptions) are printed
    try:
        result = _invoke(command, list(sys.argv[1:] if argv is None else argv))
        ran = True
    except PlanError as exc:
        return _error(str(exc), 2)
    except InfeasibleError as exc:
        ran = True  # the closest plan was priced under them
        return _error(str(exc), 1)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except Exception as exc:  # typer's vendored click signals, matched by shape
        kind = type(exc).__name__
        if kind == "Exit":  # a command's own exit code (launch's 128 + signal after it stopped the job)
            return int(getattr(exc, "exit_code", 0))
        if _interrupted(exc):
            return _error("interrupted", 130)
        if kind == "Abort":
            return _error("aborted", 130)
        if kind == "NoArgsIsHelpError":  # ``ppplan`` alone: the help (commands) is already printed
            return _error("no command given: pick one of the commands listed above", 2)
        if hasattr(exc, "format_message"):
            return _error(exc.format_message(), 2)
        raise
    finally:
        flush_notes(ran)
    return int(result) if isinstance(result, int) else 0


def _reader_gone() -> int:
    """stdout's reader closed the pipe (``ppplan search ... | head``): stop quietly with 1, as click
    and rich do where they see it first (rich's ``Console.on_broken_pipe``), with stdout pointed at
    /dev/null so that the interpreter's final flush does not raise again (Python docs, "Note on
    SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


def main() -> None:
    try:
        code = run(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:
        code = _reader_gone()
    except BaseException as exc:
        if not _interrupted(exc):
            raise
        code = _error("interrupted", 130)
    sys.exit(code)
