"""One ``generate`` for every model that decodes.

The decode protocol a model implements (``Llama``, ``HoloForCausalLM``):

* ``model.config`` with ``vocab_size`` and ``max_seq_len``;
* ``model.init_cache(batch, max_len, kind) -> cache`` (a pytree; for Llama a
  ``LlamaCache`` of ``holojax.models.kv_cache`` kinds, for the phasor model
  its recurrent state, ``kind="full"`` only);
* ``model.prefill(ids_bt, cache) -> (logits_bv, cache)``: the prompt read in
  parallel into the empty cache, logits at its last token;
* ``model.step(ids_b, cache) -> (logits_bv, cache)``: one token.

``generate`` reads the prompt, then runs the decode steps as one
``lax.scan`` inside one jit with static shapes (cache of prompt + new
tokens), so decoding compiles once per (shapes, cache kind), never per token.
``prefill`` and ``decode`` are the two halves, jitted on their own for
streaming and benchmarks.

Example:
  >>> from holojax.models.llama import LLAMA_PRESETS, Llama
  >>> m = Llama(LLAMA_PRESETS["llama-tiny"], rngs=nnx.Rngs(0))
  >>> out, cache = generate(m, jnp.ones((1, 3), jnp.int32), 4, cache="int8",
  ...                       return_cache=True)
  >>> out.shape, int(cache.pos)
  ((1, 7), 7)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np


def check_prompt(model, ids, max_new_tokens: int) -> None:
  """ValueError for bad token ids, an empty prompt, or prompt + new tokens > context."""
  cfg = model.config
  if getattr(ids, "ndim", None) != 2 or ids.shape[1] < 1:
    raise ValueError(f"prompt ids must be [batch, time>=1], got shape "
                     f"{getattr(ids, 'shape', None)}")
  if max_new_tokens < 0:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
  total = ids.shape[1] + max_new_tokens
  if total > cfg.max_seq_len:
    raise ValueError(f"prompt of {ids.shape[1]} tokens + {max_new_tokens} new tokens = {total} "
                     f"exceeds the model's context (max_seq_len={cfg.max_seq_len})")
  if isinstance(ids, jax.core.Tracer):
    return
  a = np.asarray(ids)
  if not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"prompt ids must be integers, got dtype {a.dtype}")
  lo, hi = int(a.min()), int(a.max())
  if lo < 0 or hi >= cfg.vocab_size:
    raise ValueError(f"prompt has token ids outside [0, {cfg.vocab_size}): min {lo}, max {hi}")


def _check_sampling(temperature, key):
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0")
  if temperature > 0 and key is None:
    raise ValueError("key is required when temperature > 0")


def decode_steps(model, cache, logits_bv, n: int, *, temperature: float = 0.0,
                 key: jax.Array | None = None):
  """``n`` decoding steps from (cache, last logits), as one scan.

  Each step picks tok = argmax(logits) (temperature 0) or samples
  softmax(logits / temperature), feeds it to ``model.step`` and keeps the
  new logits. Returns ((cache, logits_bv), tokens int32[n, B]).
  """
  def decode(carry, key):
    cache, logits_bv = carry
    if temperature > 0:
      tok_b = jax.random.categorical(key, logits_bv / temperature, axis=-1)
    else:
      tok_b = jnp.argmax(logits_bv, axis=-1)
    tok_b = tok_b.astype(jnp.int32)
    logits_bv, cache = model.step(tok_b, cache)
    return (cache, logits_bv), tok_b

  keys = jax.random.split(key, n) if temperature > 0 else None
  return jax.lax.scan(decode, (cache, logits_bv), keys, length=n)


def generate(model, ids, max_new_tokens: int, *, cache="full", temperature: float = 0.0,
             key: jax.Array | None = None, return_cache: bool = False):
  """Greedy (temperature 0) or sampled continuation of ``ids``.

  Args:
    model: a model with the decode protocol (module docstring).
    ids: int32[B, P] prompt, P >= 1, ids in [0, vocab).
    max_new_tokens: N >= 0; P + N <= the model's ``max_seq_len``.
    cache: a cache kind ("full", "int8", "int4", "window") or a
      ``kv_cache.CacheSpec`` (models with one state kind take "full").
    temperature: softmax temperature (0: argmax).
    key: PRNG key, needed when temperature > 0.
    return_cache: also return the cache after the last token.

  Returns:
    int32[B, P + N] (the prompt, then the new tokens), and the cache when
    ``return_cache``.
  """
  check_prompt(model, ids, max_new_tokens)
  _check_sampling(temperature, key)
  key = jax.random.key(0) if key is None else key
  graphdef, state = nnx.split(model)
  ids = jnp.asarray(ids, jnp.int32)
  toks_bn, out_cache = _generate(graphdef, state, ids, key, max_new_tokens, float(temperature),
                                 cache)
  out = jnp.concatenate([ids, toks_bn], axis=1)
  return (out, out_cache) if return_cache else out


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _generate(graphdef, state, prompt_bp, key, n, temperature, kind):
  model = nnx.merge(graphdef, state)
  b, p = prompt_bp.shape
  cache = model.init_cache(b, p + n, kind)
  logits_bv, cache = model.prefill(prompt_bp, cache)
  (cache, _), toks_nb = decode_steps(model, cache, logits_bv, n, temperature=temperature,
                                     key=key)
  return toks_nb.T, cache


def prefill(model, ids, *, max_len: int, cache="full"):
  """The prompt read into a new cache of ``max_len`` tokens (jitted):
  (logits float32[B, V] at the last token, cache)."""
  if getattr(ids, "ndim", None) == 2 and max_len < ids.shape[1]:
    raise ValueError(f"max_len={max_len} is shorter than the prompt's {ids.shape[1]} tokens")
  check_prompt(model, ids, max_len - ids.shape[1])
  graphdef, state = nnx.split(model)
  return _prefill(graphdef, state, jnp.asarray(ids, jnp.int32), max_len, cache)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _prefill(graphdef, state, ids_bt, max_len, kind):
  model = nnx.merge(graphdef, state)
  cache = model.init_cache(ids_bt.shape[0], max_len, kind)
  return model.prefill(ids_bt, cache)


def decode(model, cache, logits_bv, n: int, *, temperature: float = 0.0,
           key: jax.Array | None = None):
  """``n`` steps from a cache (jitted, the cache donated; one compile per n and
  cache shape): (tokens int32[B, n], cache, logits_bv after the last token)."""
  _check_sampling(temperature, key)
  key = jax.random.key(0) if key is None else key
  graphdef, state = nnx.split(model)
  (cache, logits_bv), toks_nb = _decode(graphdef, state, cache, logits_bv, key, n,
                                        float(temperature))
  return toks_nb.T, cache, logits_bv


@functools.partial(jax.jit, static_argnums=(0, 5, 6), donate_argnums=(2,))
def _decode(graphdef, state, cache, logits_bv, key, n, temperature):
  return decode_steps(nnx.merge(graphdef, state), cache, logits_bv, n, temperature=temperature,
                      key=key)
