"""crossfl benchmarks: every ``bench_*.py`` module here has a ``main()``; run them all with
``python -m benchmarks`` (``make bench``) or one with ``python -m benchmarks NAME``."""
