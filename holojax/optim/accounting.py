"""Exact optimizer-state memory accounting.

Bits per parameter = 8 * (bytes of every array in the optimizer state) /
(number of parameter elements). Scalars (step counts, keys) are counted too,
so the number is what the state really occupies, not a formula.
"""

from __future__ import annotations

import jax
import numpy as np


def tree_bytes(tree) -> int:
  """Total bytes of the array leaves of ``tree`` (arrays or ShapeDtypeStructs)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
      continue
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.eval_shape(jax.random.key_data, leaf)  # typed key -> uint32 data
    total += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
  return total


def tree_size(tree) -> int:
  """Number of elements in the array leaves of ``tree``."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)
             if hasattr(leaf, "shape"))


def num_params(model) -> int:
  """Learned parameters (``nnx.Param`` elements) of an NNX model; works on
  ``nnx.eval_shape`` models too.

  Example:
    >>> from flax import nnx
    >>> num_params(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    8
  """
  from flax import nnx  # noqa: PLC0415 (the optimizers need no flax)
  return tree_size(nnx.state(model, nnx.Param))


def state_bits_per_param(opt_state, params) -> float:
  """Optimizer-state bits per parameter element.

  Works on concrete states and on ``jax.eval_shape`` outputs, so memory
  tables need no device memory::

    >>> import jax, jax.numpy as jnp, optax
    >>> params = {"w": jnp.zeros((1024, 1024))}
    >>> state = jax.eval_shape(optax.adam(1e-3).init, params)
    >>> round(state_bits_per_param(state, params), 3)
    64.0
  """
  n = tree_size(params)
  if n == 0:
    raise ValueError("params has no array elements")
  return 8.0 * tree_bytes(opt_state) / n
