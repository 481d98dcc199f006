"""Benchmarks: bloomtui against transformers, the seed article's method, Accelerate disk offload and the floors.

Run `python -m benchmarks.run [--quick] [--out BENCHMARKS.md]`. Every contender runs in its own subprocess
(`python -m benchmarks.worker ...`), so each one's peak RSS is its own; speed is reported as medians and
ratios measured side by side in one run, never asserted in tests.
"""
