"""Low-rank adapters on a model's linear layers (``nnx.LoRA`` around the originals).

  y = W x + B A x,   A [d_in, r] (random), B [r, d_out] (zeros, so the
  model starts unchanged), both ``nnx.LoRAParam``: train them with
  ``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` and the rest stays frozen.

Example:
  >>> from holojax.models.llama import LLAMA_PRESETS, Llama
  >>> m = Llama(LLAMA_PRESETS["llama-tiny"], rngs=nnx.Rngs(0))
  >>> ids = jnp.zeros((1, 4), jnp.int32)
  >>> before = m(ids)
  >>> m = add_lora(m, 4, ("q_proj", "v_proj"), rngs=nnx.Rngs(1))
  >>> bool(jnp.array_equal(m(ids), before)), lora_count(m)
  (True, 1792)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def add_lora(model, rank: int, targets, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
  """Wraps each ``nnx.Linear`` named in ``targets`` of every layer of
  ``model.layers`` in an ``nnx.LoRA`` of ``rank`` (in place; returns the model).

  Raises:
    ValueError: rank < 1, or a target that is not an ``nnx.Linear`` of the layers
      (the message names it).
  """
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise ValueError(f"rank={rank!r} must be an int >= 1")
  for i, layer in enumerate(model.layers):
    for name in targets:
      base = getattr(layer, name, None)
      if not isinstance(base, nnx.Linear):
        raise ValueError(f"layers[{i}].{name} is {type(base).__name__}, not an nnx.Linear: "
                         f"cannot add LoRA to it")
      setattr(layer, name, nnx.LoRA(base.in_features, rank, base.out_features, base_module=base,
                                    dtype=base.dtype, param_dtype=param_dtype, rngs=rngs))
  return model


def lora_count(model) -> int:
  """Number of LoRA parameters in ``model``."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
