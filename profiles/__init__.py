"""What describes a job: core types and errors, presets (models, clusters), readers, shipped data.

The bottom layer: imports nothing else of ppplan, and no torch (DESIGN.md, Packages)."""
