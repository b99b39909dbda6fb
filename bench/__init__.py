"""Benchmarks of OnePlatform against the bare backends it drives: ``python -m bench``."""
