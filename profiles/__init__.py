"""Schemas, presets, Hugging Face ingestion, the profiler and the regression suite.

Importing this package never imports torch (the profiler imports it lazily).
"""
