"""Benchmarks: runtime throughput, packing efficiency, MFU, and operator scale.

Every number is reported as a ratio against a baseline measured in the same session,
with baseline and candidate runs interleaved (ABAB...) so shared-machine load hits both
alike. `python -m bench.run` runs them all; `--quick` uses smoke-test sizes.
"""
