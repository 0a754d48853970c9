"""The benchmark: `python -m bench.run` (see BENCHMARKS.md)."""
