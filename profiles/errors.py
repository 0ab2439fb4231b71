"""The error types every package raises; only the CLI maps them to exit codes."""


class PlanError(ValueError):
    """Bad input: the message says what is wrong and how to fix it (CLI exit 2)."""


class InfeasibleError(RuntimeError):
    """A well-formed request with no plan that fits (CLI exit 1)."""


def quoted(text: str, limit: int = 40) -> str:
    """``text`` as an error message echoes it: cut to ``limit`` characters, so a 5,000-digit value does not make a
    5 KB line."""
    return text if len(text) <= limit else text[:limit] + "..."
