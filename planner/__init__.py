"""The top layer: the search (``search``), the trust loop (``trust``) and the command line (``cli``).

Never imports torch, even lazily: device checks live in ``launch`` (DESIGN.md, Packages)."""
