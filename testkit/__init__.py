"""Scaffolding shared by tests/ and benchmarks/: a scratch project to run in, a data file that
gates a site's task, and the processes a run started. Not installed and not shipped: it lives
outside src/ and is importable from the repository root (pytest's pythonpath, `python -m
benchmarks`)."""
