"""Plan files as the commands read them: parsed and validated (``profiles.loader.load_plan``:
keys, types, caps, ``schema_version``), then checked against the runtime rules of the
plan's own stack (``costmodels.rules.check_plan``), the same rules ``launch`` applies, so
``explain``, ``simulate`` and ``compare`` never work on a plan that could not run."""

from __future__ import annotations

from pathlib import Path

from costmodels.rules import check_plan
from profiles.loader import load_plan, plan_stack
from profiles.schema import Plan


def load_checked_plan(path: Path) -> Plan:
    plan = load_plan(path)
    check_plan(plan, plan_stack(plan))
    return plan
