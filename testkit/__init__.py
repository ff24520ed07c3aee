"""Scaffolding shared by tests/ and benchmarks/: a scratch project to run in, a data file that
gates a site's task, the processes a run started, run plans built without their checks, and
the stand-ins for parts absent here (Apptainer, podman-hpc, the Globus Compute SDK's Client,
Globus Transfer's client, a compute node's devices). Not installed and not shipped: it lives
outside src/ and is importable from the repository root (pytest's pythonpath, `python -m
benchmarks`)."""
