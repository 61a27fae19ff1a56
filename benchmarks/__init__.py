"""Benchmarks: each script writes one JSON result (with machine info) into benchmarks/results/."""
