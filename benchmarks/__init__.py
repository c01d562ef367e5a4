"""Benchmarks of fflab's training engine (run with ``make bench``); not part of the package."""
