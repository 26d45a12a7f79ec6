"""Benchmarks of the HOLO layers: layer speed, the spiral demo."""
