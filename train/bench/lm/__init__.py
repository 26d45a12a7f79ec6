"""Benchmarks of language-model training: throughput, the embedding gradient."""
