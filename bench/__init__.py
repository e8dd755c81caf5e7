"""Benchmarks a user can run: ``python -m bench NAME [options]``."""
