"""Pure cost models: FLOPs, memory, communication, compute time, pipeline schedules.

Nothing here imports torch, ortools, typer or rich, and nothing does I/O, so the
search stays fast and installs light (see DESIGN.md).
"""
