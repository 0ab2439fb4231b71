"""The error types every package raises; only the CLI maps them to exit codes."""


class PlanError(ValueError):
    """Bad input: the message says what is wrong and how to fix it (CLI exit 2)."""


class InfeasibleError(RuntimeError):
    """A well-formed request with no plan that fits (CLI exit 1)."""
