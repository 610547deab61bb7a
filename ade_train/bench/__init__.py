"""Benchmarks behind ``make bench`` (testbed figures: see report.py)."""
