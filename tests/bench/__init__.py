"""Benchmarks (``make bench``): measurements reported as ratios to baselines of the same run."""
