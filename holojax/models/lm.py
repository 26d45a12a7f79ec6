"""The causal-LM contract every model family follows, and the pieces it shares.

Every model (``GPT``, ``HoloLM``, ``HoloForCausalLM``, and later families) is
called one way::

  model(input_ids)                  # int32[B, T] -> logits float32[B, T, V]
  model(input_ids, labels=labels)   # -> CausalLMOutput(logits, loss float32[])

``labels`` are aligned with ``input_ids`` (Hugging Face convention) and
shifted inside: logits at t predict labels at t + 1, positions whose label
is ``ignore_index`` (-100) are skipped (:func:`causal_lm_loss`). A model's
``__call__`` computes its logits and ends with ``return lm_output(logits,
labels)``, so the labels branch is written once, here.

Their configs speak one vocabulary (Hugging Face / Llama names):
``vocab_size, hidden_size, num_hidden_layers, num_heads, intermediate_size``
(the MLP width, an int), ``max_seq_len`` and, where the model has them,
``dtype, param_dtype`` (names in :data:`DTYPES`), ``norm_eps, rope_base``.

Example:
  >>> logits = jnp.zeros((1, 3, 4))
  >>> lm_output(logits) is logits
  True
  >>> out = lm_output(logits, jnp.array([[3, 1, 2]]))
  >>> round(float(out.loss), 4)   # uniform over 4 tokens: log 4
  1.3863
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["DTYPES", "CausalLMOutput", "causal_lm_loss", "check_dtypes", "check_input_ids",
           "check_positive_ints", "lm_output", "next_token_loss"]

# Config dtype names -> jnp dtypes (``dtype`` computes, ``param_dtype`` stores).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class CausalLMOutput(NamedTuple):
  """A model's output given labels: logits float32[B, T, V]; loss float32[]."""

  logits: jax.Array
  loss: jax.Array | None = None


def next_token_loss(logits_btv: jax.Array, targets_bt: jax.Array) -> jax.Array:
  """Mean cross-entropy against targets already aligned with the logits.

  loss = mean_{b, t} -log softmax(logits[b, t])[targets[b, t]]; the training
  loop calls it as ``next_token_loss(model(batch[:, :-1]), batch[:, 1:])``.

  Example:
    >>> round(float(next_token_loss(jnp.zeros((1, 2, 4)), jnp.array([[0, 3]]))), 4)
    1.3863
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits_btv, targets_bt).mean()


def causal_lm_loss(logits_btv: jax.Array, labels_bt: jax.Array, *,
                   ignore_index: int = -100) -> jax.Array:
  """Mean next-token cross-entropy, HF shift: logits[t] vs labels[t + 1].

  loss = sum_{t: l_{t+1} != ignore} CE(logits_t, l_{t+1}) / #counted
  (0 when nothing is counted).

  Example:
    >>> lg = jnp.zeros((1, 3, 4)); lb = jnp.array([[-100, 1, -100]])
    >>> round(float(causal_lm_loss(lg, lb)), 4)   # log 4
    1.3863
  """
  lg_btv = logits_btv[:, :-1].astype(jnp.float32)
  lb_bt = labels_bt[:, 1:]
  mask_bt = lb_bt != ignore_index
  ce_bt = optax.softmax_cross_entropy_with_integer_labels(lg_btv, jnp.where(mask_bt, lb_bt, 0))
  count = jnp.maximum(jnp.sum(mask_bt), 1)
  return jnp.sum(jnp.where(mask_bt, ce_bt, 0.0)) / count


def lm_output(logits_btv: jax.Array, labels_bt: jax.Array | None = None, *,
              ignore_index: int = -100) -> jax.Array | CausalLMOutput:
  """The contract's return value: logits, or ``CausalLMOutput`` given labels.

  Labels are token ids in ``[0, vocab)`` or ``ignore_index`` (-100: not
  counted); concrete labels (not traced under jit) are checked.

  Raises:
    ValueError: ``labels_bt`` is not shaped like ``input_ids`` ([B, T]), or
      (concrete labels) holds a value that is neither a token id nor
      ``ignore_index``.
  """
  if labels_bt is None:
    return logits_btv
  labels_bt = jnp.asarray(labels_bt)
  if labels_bt.shape != logits_btv.shape[:2]:
    raise ValueError(f"labels shape {labels_bt.shape} must equal input_ids shape "
                     f"{logits_btv.shape[:2]}")
  if labels_bt.size and not isinstance(labels_bt, jax.core.Tracer):
    vocab = logits_btv.shape[-1]
    bad = (labels_bt != ignore_index) & ((labels_bt < 0) | (labels_bt >= vocab))
    if bool(jnp.any(bad)):
      raise ValueError(f"labels hold {int(labels_bt[bad][0])}, neither a token id in "
                       f"[0, {vocab - 1}] nor ignore_index={ignore_index}")
  return CausalLMOutput(logits_btv, causal_lm_loss(logits_btv, labels_bt,
                                                   ignore_index=ignore_index))


def check_input_ids(input_ids, max_seq_len: int, vocab_size: int | None = None) -> jax.Array:
  """``input_ids`` as an integer array [B, T] with T <= ``max_seq_len``.

  Concrete ids (not traced under jit) are also checked against
  ``[0, vocab_size)``: an id outside it would give NaN logits or wrap around
  silently in the embedding.

  Example:
    >>> check_input_ids([[1, 2]], 8, vocab_size=4).shape
    (1, 2)

  Raises:
    TypeError: not integer.
    ValueError: not [B, T], longer than ``max_seq_len``, or (concrete ids) an
      id outside ``[0, vocab_size)``.
  """
  ids_bt = jnp.asarray(input_ids)
  if not jnp.issubdtype(ids_bt.dtype, jnp.integer):
    raise TypeError(f"input_ids must be integer, got dtype {ids_bt.dtype}")
  if ids_bt.ndim != 2:
    raise ValueError(f"input_ids must be [B, T], got shape {ids_bt.shape}")
  if ids_bt.shape[1] > max_seq_len:
    raise ValueError(f"input_ids length T={ids_bt.shape[1]} exceeds the model's "
                     f"max_seq_len={max_seq_len}; use shorter sequences or a larger max_seq_len")
  if vocab_size is not None and ids_bt.size and not isinstance(ids_bt, jax.core.Tracer):
    lo, hi = int(jnp.min(ids_bt)), int(jnp.max(ids_bt))
    if lo < 0 or hi >= vocab_size:
      raise ValueError(f"input_ids hold ids in [{lo}, {hi}]; the vocabulary allows "
                       f"[0, {vocab_size - 1}]")
  return ids_bt


def check_positive_ints(config, *names: str) -> None:
  """Raises ``ValueError`` naming the first field of ``names`` that is not an int >= 1."""
  for name in names:
    v = getattr(config, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive int, got {v!r}")


def check_dtypes(config) -> None:
  """Raises ``ValueError`` unless ``config.dtype`` and ``config.param_dtype`` are in DTYPES."""
  for name in ("dtype", "param_dtype"):
    if getattr(config, name) not in DTYPES:
      raise ValueError(f"{name} must be one of {sorted(DTYPES)}, got {getattr(config, name)!r}")
