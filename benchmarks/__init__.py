"""Benchmarks: scripts that print a table and write their results to ``benchmarks/results/`` (see README.md). Run
them as modules from the repository root, e.g. ``python -m benchmarks.quality_suite report``."""
