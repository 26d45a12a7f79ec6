"""Pure-``jnp`` reference of HoloKV's slot attention (the kernel's contract).

HoloKV superposes k consecutive tokens into one cache slot,
K_s = k^{-1/2} sum_j c_j ⊙ key_{ks+j} (c_j in {±1}^D), the same for V, so
a cache of N tokens holds S = N / k slots. At decode the caller turns each
(query head h of kv head g, code j) pair into a *row* r = scale * q_h ⊙ c_j
and needs, per batch b, kv head g and row r, softmax attention over the
valid slots s < n (n = n_valid):

  score_s = qr_{bgr} · K_{bsg},
  lse_{bgr} = log sum_{s<n} exp(score_s),
  o_{bgr}   = sum_{s<n} exp(score_s - lse_{bgr}) V_{bsg},

in float32; n = 0 gives o = 0 and lse = -inf. The caller merges rows (a
joint softmax across codes) and exact keys with these statistics. This
reference reads the compressed [B, S, G, D] arrays directly (two einsums
over slots), never expanding them to tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def slot_attention_reference(qr_bgrd: jax.Array, ks_bsgd: jax.Array, vs_bsgd: jax.Array,
                             n_valid: jax.Array | int) -> tuple[jax.Array, jax.Array]:
  """Softmax attention of rows over the first ``n_valid`` slots, float32.

  Args:
    qr_bgrd: query rows [B, G, R, D] (coded and scaled by the caller).
    ks_bsgd, vs_bsgd: slot keys and values [B, S, G, D].
    n_valid: int scalar (may be traced): slots s < n_valid are attended.

  Returns:
    (o float32[B, G, R, D], lse float32[B, G, R]) as in the module
    docstring; o = 0 and lse = -inf where n_valid <= 0.

  Example:
    >>> q = jnp.ones((1, 1, 1, 2)); ks = jnp.zeros((1, 3, 1, 2))
    >>> vs = jnp.arange(6.0).reshape(1, 3, 1, 2)
    >>> o, lse = slot_attention_reference(q, ks, vs, 2)   # mean of slots 0, 1
    >>> o[0, 0, 0], lse[0, 0, 0]   # lse = log 2
    (Array([1., 2.], dtype=float32), Array(0.6931472, dtype=float32))
  """
  f32 = jnp.float32
  s_bgrs = jnp.einsum("bgrd,bsgd->bgrs", qr_bgrd.astype(f32), ks_bsgd.astype(f32),
                      precision=HIGHEST)
  valid_1111s = (jnp.arange(ks_bsgd.shape[1]) < n_valid)[None, None, None, :]
  s_bgrs = jnp.where(valid_1111s, s_bgrs, -jnp.inf)
  m_bgr = jnp.max(s_bgrs, axis=-1)
  m_bgr = jnp.where(jnp.isfinite(m_bgr), m_bgr, 0.0)  # no valid slot: exp(-inf) = 0
  p_bgrs = jnp.exp(s_bgrs - m_bgr[..., None])
  l_bgr = jnp.sum(p_bgrs, axis=-1)
  acc_bgrd = jnp.einsum("bgrs,bsgd->bgrd", p_bgrs, vs_bsgd.astype(f32), precision=HIGHEST)
  return acc_bgrd * safe_reciprocal(l_bgr)[..., None], m_bgr + jnp.log(l_bgr)


def safe_reciprocal(l: jax.Array) -> jax.Array:
  """1 / l where l > 0, else 0 (an empty softmax sum reads nothing).

  Example:
    >>> safe_reciprocal(jnp.array([2.0, 0.0]))
    Array([0.5, 0. ], dtype=float32)
  """
  pos = l > 0
  return jnp.where(pos, 1.0 / jnp.where(pos, l, 1.0), 0.0)
