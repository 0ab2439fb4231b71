"""Measure this machine: the runtime's own layers (``layers``, ``cases``, ``group``) and its
collectives (``comm``), written as profile files that ``costmodels.profile_times`` prices with."""
