"""Optax transformations of holojax and the optimizer registry."""

from holojax.optim import registry
from holojax.optim.accounting import state_bits_per_param, tree_bytes, tree_size
from holojax.optim.turbo_adam import scale_by_turbo_adam, turbo_adam

registry.register("turbo_adam", lambda learning_rate, weight_decay, **kw: turbo_adam(
    learning_rate, weight_decay=weight_decay, **kw))
registry.register("turbo_adam_v", lambda learning_rate, weight_decay, **kw: turbo_adam(
    learning_rate, weight_decay=weight_decay, **{"compress_m": False, **kw}))

__all__ = ["registry", "scale_by_turbo_adam", "state_bits_per_param", "tree_bytes",
           "tree_size", "turbo_adam"]
