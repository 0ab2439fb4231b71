"""Everything that touches devices: the torch runtime (``runtime``), the profiler (``profiler``),
the emitters (``emit``, no torch), the launcher and predicted-vs-measured comparison.

Never imports ``planner``; reports warnings through ``logging`` or a callback."""
