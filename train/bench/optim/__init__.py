"""Benchmarks of the optimizers: state size, step time, convergence, the demo."""
