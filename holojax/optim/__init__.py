"""Optax transformations of holojax and the optimizer registry."""

from holojax.optim import registry
from holojax.optim.accounting import state_bits_per_param, tree_bytes, tree_size

__all__ = ["registry", "state_bits_per_param", "tree_bytes", "tree_size"]
