"""Search space, stage-cut dynamic programming, CP-SAT refinement, ranking,
explanation and the ``ppplan`` CLI. Never imports torch at module import time."""
