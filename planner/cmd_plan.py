"""``ppplan search``, ``evaluate``, ``explain`` and ``schema``."""

from __future__ import annotations

import json

from planner.app import app, out
from profiles.schema import Plan


@app.command()
def schema() -> None:
    """Print the JSON Schema of a plan file."""
    out.print_json(json.dumps(Plan.model_json_schema()))
