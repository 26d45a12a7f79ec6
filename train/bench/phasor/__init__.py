"""Benchmarks of the phasor memory: kernel speed, recall, long context."""
