"""Benchmarks (run as modules, e.g. `python -m bench.model`); not part of the installed package."""
