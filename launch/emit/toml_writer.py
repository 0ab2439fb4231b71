"""A small TOML writer for the value types the torchtitan emitter uses (TOML 1.0).

Python's ``tomllib`` reads TOML but cannot write it; the emitted files only
need tables of strings, integers, floats, booleans and (nested) lists of those.
"""

from __future__ import annotations

import json
from typing import Union

TomlValue = Union[str, int, float, bool, list]


def toml_value(value: TomlValue) -> str:
    """One TOML value: basic strings use JSON escapes, which TOML shares."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_entry(key: str, value: TomlValue) -> str:
    """``key = value``; a list of lists is written one inner list per line."""
    if isinstance(value, list) and value and all(isinstance(item, list) for item in value):
        inner = "".join(f"    {toml_value(item)},\n" for item in value)
        return f"{key} = [\n{inner}]\n"
    return f"{key} = {toml_value(value)}\n"


def toml_document(tables: dict[str, dict[str, TomlValue]], comments: dict[str, list[str]] | None = None) -> str:
    """Tables in the given order; ``comments[table]`` lines go above that table's header."""
    comments = comments or {}
    parts = []
    for table, entries in tables.items():
        notes = "".join(f"# {line}\n" for line in comments.get(table, []))
        body = "".join(toml_entry(key, value) for key, value in entries.items())
        parts.append(f"{notes}[{table}]\n{body}")
    return "\n".join(parts)
