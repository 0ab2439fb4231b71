"""Reading one corpus row's text field by field (``planner.trust.published_runs`` assembles
the configuration): every unreadable value is a "malformed" problem naming the field and what
it should be, every missing one is listed under "not stated"."""

from __future__ import annotations

import math
import re

from profiles.schema import SCHEDULE_NAMES

NOT_STATED = "not stated"
# The metric column's names; tflops_per_gpu splits by the source's FLOP convention (hardware FLOPs
# when it counts recomputation, model FLOPs otherwise).
METRICS = ("step_time_s", "tokens_per_s_per_gpu", "tflops_per_gpu", "mfu_pct", "oom", "memory")
HARDWARE_FLOPS_MARKERS = ("hfu-style", "counts recompute", "counts activation-recompute")


class RowFields:
    """A row's text, read field by field; every unreadable or missing field becomes a problem
    (``problems``, ``missing``; ``reasons`` lists them)."""

    def __init__(self, row: dict[str, str]) -> None:
        self.row = row
        self.problems: list[str] = []
        self.missing: list[str] = []

    def text(self, key: str) -> str:
        return (self.row.get(key) or "").strip()

    def integer(self, key: str, required: bool = True) -> int | None:
        text = self.text(key)
        if not text:
            if required:
                self.missing.append(key)
            return None
        if not re.fullmatch(r"\d{1,18}", text) or int(text) <= 0:  # 18 digits: below 2**63, and below Python's int-string limit
            self.problems.append(f"malformed {key} '{text}' (a positive integer)")
            return None
        return int(text)

    def number(self, key: str) -> float | None:
        text = self.text(key)
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            self.problems.append(f"malformed {key} '{text}' (a number)")
            return None
        if not math.isfinite(value) or value <= 0:
            self.problems.append(f"malformed {key} '{text}' (a positive finite number)")
            return None
        return value

    def reasons(self) -> list[str]:
        out = list(self.problems)
        if self.missing:
            out.append("not stated: " + ", ".join(self.missing))
        return out


def read_schedule(f: RowFields, pp: int | None) -> str | None:
    """A ppplan schedule name; ``none`` (or unstated) with pp = 1 is 1F1B, which has no pipeline."""
    text = f.text("schedule").lower()
    if text in ("none", NOT_STATED, "") and pp == 1:
        return "1f1b"  # no pipeline: the schedule does not exist
    if text == "none":
        f.problems.append(f"schedule 'none' with pp={pp}")
    elif text in (NOT_STATED, ""):
        f.missing.append("schedule")
    elif text == "dualpipe":
        f.problems.append("not modelled yet: DeepSeek's DualPipe is not a ppplan schedule")
    elif text not in SCHEDULE_NAMES:
        f.problems.append(f"malformed schedule '{text}' (one of {', '.join(SCHEDULE_NAMES)})")
    else:
        return text
    return None


def read_choice(f: RowFields, key: str, allowed: tuple[str, ...]) -> str | None:
    """One of ``allowed`` (lower-cased); blank or 'not stated' is missing."""
    text = f.text(key).lower()
    if text in ("", NOT_STATED):
        f.missing.append(key)
        return None
    if text not in allowed:
        f.problems.append(f"malformed {key} '{text}' (one of {', '.join(allowed)})")
        return None
    return text


def read_metric(f: RowFields) -> tuple[str, float | None] | None:
    """(metric as compared, value); ``oom`` and ``memory`` (a row checked for its memory reading only) have none."""
    kind = read_choice(f, "metric", METRICS)
    if kind is None:
        return None
    if kind == "oom":
        return "oom", None
    if kind == "memory":  # a memory reading only (peak_memory_gib); its time is not priced
        return "memory", None
    value = f.number("value")
    if value is None:
        if not f.text("value"):
            f.missing.append("value")
        return None
    if kind == "tflops_per_gpu":
        text = (f.text("notes") + " " + f.text("derived")).lower()
        kind = "hw_tflops_per_gpu" if any(m in text for m in HARDWARE_FLOPS_MARKERS) else "model_tflops_per_gpu"
    return kind, value
