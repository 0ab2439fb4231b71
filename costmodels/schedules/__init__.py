"""Pipeline schedules as data: the registry (``registry``), generators, the torch CSV format."""
