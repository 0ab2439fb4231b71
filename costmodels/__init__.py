"""Pricing as pure functions: FLOPs, memory, communication, compute, the schedule registry and
generators, the event simulator, the runtime rules, ``estimate``.

Imports only ``profiles``; no torch, ortools, typer or rich, and no I/O, so search stays
fast and installs light (DESIGN.md)."""
