"""Benchmarks: each measures both sides in one process and prints the ratios (bench/README.md)."""
