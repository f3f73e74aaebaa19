"""The benchmarks, each run from the repo root as `python -m bench.NAME` (`bench.all`: every one)."""
