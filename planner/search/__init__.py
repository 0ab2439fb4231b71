"""The search: the space, stage cut points, branch and bound, explanations, custom schedules."""
