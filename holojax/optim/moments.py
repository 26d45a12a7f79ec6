"""Moment updates shared by the compressed optimizers, safe for any finite gradient.

Adam's second moment ``v = b2 v + (1 - b2) g^2`` overflows float32 once
``|g| > 1.8e19`` (``g^2 > 3.4e38``); every later update is then 0 or NaN.
holojax stores its root instead, ``s = sqrt(v)``, updated without forming
``g^2``::

  s_t = a sqrt(b2 (s_{t-1} / a)^2 + (1 - b2) (g_t / a)^2),   a = max(s_{t-1}, |g_t|)

which is exact (to float rounding) and bounded by ``max|g|``, so every
finite gradient gives a finite state. The first moment is optax's
(:func:`optax.tree.update_moment`), a convex combination of gradients and
therefore finite too.

Example:
  >>> import jax.numpy as jnp
  >>> s = rms_moment(jnp.array([3e30]), jnp.array([0.0]), 0.999)
  >>> float(s[0] / 3e30)  # sqrt(1 - 0.999)
  0.0316...
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def rms_moment(g: jax.Array, s: jax.Array, decay) -> jax.Array:
  """``sqrt(decay s^2 + (1 - decay) g^2)``, elementwise, without overflow."""
  a = jnp.maximum(s, jnp.abs(g))
  safe = jnp.where(a > 0, a, 1.0)
  return a * jnp.sqrt(decay * jnp.square(s / safe) + (1.0 - decay) * jnp.square(g / safe))


def block_rms(g: jax.Array, block: int) -> jax.Array:
  """Root of the mean of ``g^2`` over blocks of ``block`` along the last axis.

  ``(*lead, L) -> (*lead, ceil(L / block))``; a partial last block is
  averaged over its real elements. Computed in units of the block's largest
  ``|g|``, so no gradient overflows.
  """
  from holojax.optim import layout  # noqa: PLC0415 (layout imports nothing from here)
  length = g.shape[-1]
  gb = layout.row_blocks(jnp.abs(g), block)
  a = jnp.max(gb, axis=-1, keepdims=True)
  safe = jnp.where(a > 0, a, 1.0)
  nb = gb.shape[-2]
  counts = jnp.minimum(block, length - block * jnp.arange(nb)).astype(jnp.float32)
  mean_sq = jnp.sum(jnp.square(gb / safe), axis=-1) / counts.reshape((1,) * (g.ndim - 1) + (nb,))
  return a[..., 0] * jnp.sqrt(mean_sq)


def dense_adam(g: jax.Array, m: jax.Array, s: jax.Array, *, b1, b2, eps, count
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Adam on one dense tensor with a root-stored second moment.

  ``m_t = b1 m + (1 - b1) g``, ``s_t = rms_moment(g, s, b2)``,
  ``u = (m_t / (1 - b1^t)) / (s_t / sqrt(1 - b2^t) + eps)``.
  Returns ``(u, m_t, s_t)`` in float32.
  """
  g32 = g.astype(jnp.float32)
  m = optax.tree.update_moment(g32, m, b1, 1)
  s = rms_moment(g32, s, b2)
  m_hat = optax.tree.bias_correction(m, b1, count)
  inv_bc2 = optax.tree.bias_correction(jnp.ones((), jnp.float32), b2, count)  # 1 / (1 - b2^t)
  return m_hat / (s * jnp.sqrt(inv_bc2) + eps), m, s


def dense_adam_concat(gs: list, m: jax.Array, s: jax.Array, *, b1, b2, eps, count
                      ) -> tuple[list, jax.Array, jax.Array]:
  """:func:`dense_adam` on the tensors ``gs`` raveled and concatenated (the flat tree
  layout's dense tensors): ``m``/``s`` are ``float32[sum of sizes]``. Returns the
  updates (float32, each in its tensor's shape) and the new ``m``, ``s``."""
  g = jnp.concatenate([x.astype(jnp.float32).reshape(-1) for x in gs])
  u, m, s = dense_adam(g, m, s, b1=b1, b2=b2, eps=eps, count=count)
  ends = np.cumsum([x.size for x in gs])
  return [u[e - x.size:e].reshape(x.shape) for e, x in zip(ends, gs)], m, s


def skip_non_finite(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``tx`` skipped as a whole on any non-finite gradient.

  ``optax.apply_if_finite`` semantics around the whole chain: a NaN/Inf
  gradient gives a zero update and leaves every inner state unchanged
  (moments, the learning-rate schedule's count, weight decay); the state is
  an ``optax.ApplyIfFiniteState`` whose ``total_notfinite`` counts the
  skipped steps. Non-finite updates are never applied, however many arrive
  in a row. The selection is ``optax.tree.where`` rather than
  ``apply_if_finite``'s ``lax.cond``: outside ``jit`` under explicit
  sharding, ``lax.cond`` gives the zero branch unsharded types and fails.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = skip_non_finite(optax.sgd(1.0))
    >>> s = tx.init({"w": jnp.ones(2)})
    >>> u, s = tx.update({"w": jnp.array([1.0, jnp.nan])}, s)
    >>> u["w"].tolist(), int(s.total_notfinite)
    ([0.0, 0.0], 1)
  """
  tx = optax.with_extra_args_support(tx)

  def init_fn(params):
    return optax.ApplyIfFiniteState(notfinite_count=jnp.zeros((), jnp.int32),
                                    last_finite=jnp.array(True),
                                    total_notfinite=jnp.zeros((), jnp.int32),
                                    inner_state=tx.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    finite = jnp.array(True)
    for g in jax.tree.leaves(updates):
      finite = finite & jnp.all(jnp.isfinite(g))
    # The check reads every gradient before ``tx`` may overwrite it in place
    # (TurboAdam's layer loop over a stacked tensor); the barrier orders it
    # first. A precaution: the H200 buffer assignment of the 13B step, compiled
    # with it, holds no copy of the gradients (CPU's does, with or without it).
    updates, finite = jax.lax.optimization_barrier((updates, finite))
    new_updates, inner = tx.update(updates, state.inner_state, params, **extra_args)
    # The skipped step's zero comes through a barrier: a broadcast constant zero
    # was merged by XLA (GPU) with the zeros that start a scanned backward pass's
    # gradient stacks and materialised, one stack-sized buffer per shape (25 GiB
    # in the 13B step of ``holojax bench big_step`` on the H200); a broadcast of
    # an opaque scalar cannot be merged with them (not yet run on the GPU).
    zero = jax.lax.optimization_barrier(jnp.zeros((), jnp.float32))
    new_updates = jax.tree.map(lambda u: jnp.where(finite, u, zero.astype(u.dtype)),
                               new_updates)
    inner = optax.tree.where(finite, inner, state.inner_state)
    return new_updates, optax.ApplyIfFiniteState(
        notfinite_count=jnp.where(finite, 0, optax.safe_increment(state.notfinite_count)),
        last_finite=finite,
        total_notfinite=jnp.where(finite, state.total_notfinite,
                                  optax.safe_increment(state.total_notfinite)),
        inner_state=inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
