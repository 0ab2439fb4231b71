"""The command line: typer commands and rich output (the only package that imports them)."""
