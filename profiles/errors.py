"""The error types every package raises (only the CLI maps them to exit codes), and how their messages write values."""

import math


class PlanError(ValueError):
    """Bad input: the message says what is wrong and how to fix it (CLI exit 2)."""


class InfeasibleError(RuntimeError):
    """A well-formed request with no plan that fits (CLI exit 1)."""


def quoted(text: str, limit: int = 40) -> str:
    """``text`` as an error message echoes it: cut to ``limit`` characters, so a 5,000-digit value does not make a
    5 KB line."""
    return text if len(text) <= limit else text[:limit] + "..."


SI_SUFFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def sig3(value: float) -> str:
    """Three significant digits: 0.871, 58.8, 102k, 1.94M (trailing zeros kept: 72.0)."""
    if value is None or not math.isfinite(value):
        return "-" if value is None else str(value)
    if value == 0:
        return "0"
    largest = SI_SUFFIXES[0][0]
    if abs(value) >= 1000 * largest * 0.9995:  # beyond the largest suffix: one exponent, not a suffix per factor
        return f"{value:.2e}"
    for factor, suffix in SI_SUFFIXES:
        if abs(value) >= factor * 0.9995:
            return sig3(value / factor) + suffix
    text = f"{value:#.3g}"
    if "e" in text:
        return f"{value:.2e}"
    return text.rstrip(".")
