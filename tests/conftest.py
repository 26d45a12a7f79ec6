"""Test settings: 8 CPU devices (for mesh tests), strict rank promotion."""

import os

# Must happen before JAX initialises its backends.
# Faster XLA compiles on CPU: tests run tiny models, compile time dominates.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
