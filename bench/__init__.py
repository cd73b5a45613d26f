"""Benchmarks: run them as modules from the repository root (``./dev bench bench/<script>.py``)."""
