"""Pure-``jnp`` reference of the causal phasor memory (the kernels' contract).

A value ``v_s`` is *bound* to a key phase by rotation, ``v_s e^{i k'_s}``;
the memory is the running sum of bound items; a read *unbinds* with the
conjugate of the query phase and keeps the real part (per batch b, head h,
dim d; ``f`` optional positional frequencies, added to both phases as t f):

  k'_t = k_t + t f,   q'_t = q_t + t f,
  S_t  = sum_{s<=t} v_s e^{i k'_s},   y_t = c_t Re(S_t e^{-i q'_t}),

with the read scale ``c_t = 1/sqrt(t+1)`` ("sqrt_t") or 1 ("none"). The
running sum is one ``jax.lax.associative_scan`` in complex64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def bind(v: jax.Array, theta: jax.Array) -> jax.Array:
  """Bind values to phases: v * e^{i theta}, complex64 (norm preserving).

  Example:
    >>> m = bind(jnp.ones(3), jnp.zeros(3))
    >>> m.dtype
    dtype('complex64')
  """
  v = v.astype(jnp.float32)
  th = theta.astype(jnp.float32)
  return jax.lax.complex(v * jnp.cos(th), v * jnp.sin(th))


def unbind(m: jax.Array, theta: jax.Array) -> jax.Array:
  """Unbind with the conjugate phase: m * e^{-i theta}, complex64.

  ``unbind(bind(v, th), th).real == v`` up to float32 rounding; on a
  superposition it returns the wanted item plus cross-talk.

  Example:
    >>> v = jnp.array([1.0, -2.0]); th = jnp.array([0.3, 2.0])
    >>> bool(jnp.allclose(unbind(bind(v, th), th).real, v))
    True
  """
  th = theta.astype(jnp.float32)
  return m.astype(jnp.complex64) * jax.lax.complex(jnp.cos(th), -jnp.sin(th))


def read_scale(t: jax.Array, scale: str) -> jax.Array:
  """The read scale c_t: 1/sqrt(t+1) for "sqrt_t", 1 for "none"; float32.

  Example:
    >>> read_scale(jnp.arange(4), "sqrt_t")
    Array([1.       , 0.70710677, 0.57735026, 0.5      ], dtype=float32)
  """
  t = jnp.asarray(t, jnp.float32)
  if scale == "sqrt_t":
    return jax.lax.rsqrt(t + 1.0)
  if scale == "none":
    return jnp.ones_like(t)
  raise ValueError(f"scale={scale!r} must be 'sqrt_t' or 'none'")


def with_positions(theta_bthd: jax.Array, freq_hd: jax.Array | None,
                   t_t: jax.Array) -> jax.Array:
  """Phases with positions, theta + t f, float32[B, T, H, D] (f None: theta).

  Example:
    >>> th = jnp.zeros((1, 3, 1, 1)); f = jnp.full((1, 1), 0.5)
    >>> with_positions(th, f, jnp.arange(3))[0, :, 0, 0]
    Array([0. , 0.5, 1. ], dtype=float32)
  """
  th = theta_bthd.astype(jnp.float32)
  if freq_hd is None:
    return th
  p_thd = t_t.astype(jnp.float32)[:, None, None] * freq_hd.astype(
      jnp.float32)[None]
  return th + p_thd[None]


@functools.partial(jax.jit, static_argnames=("scale",))
def phasor_memory_reference(v_bthd: jax.Array, k_bthd: jax.Array,
                            q_bthd: jax.Array,
                            freq_hd: jax.Array | None = None, *,
                            scale: str = "sqrt_t") -> jax.Array:
  """Causal phasor memory via ``jax.lax.associative_scan`` (complex64 sum).

  y_t = Re(sum_{s<=t} v_s e^{i k'_s} e^{-i q'_t}) * c_t with k' = k + t f,
  q' = q + t f (f = freq_hd, zero if None). Output dtype = v's.

  Example:
    >>> v = jnp.ones((1, 3, 1, 2)); th = jnp.zeros((1, 3, 1, 2))
    >>> phasor_memory_reference(v, th, th)[0, :, 0, 0]   # (t+1)/sqrt(t+1)
    Array([1.       , 1.4142135, 1.7320508], dtype=float32)
  """
  t_t = jnp.arange(v_bthd.shape[1])
  m_bthd = bind(v_bthd, with_positions(k_bthd, freq_hd, t_t))
  s_bthd = jax.lax.associative_scan(jnp.add, m_bthd, axis=1)
  y_bthd = unbind(s_bthd, with_positions(q_bthd, freq_hd, t_t)).real
  c_t = read_scale(t_t, scale)
  return (y_bthd * c_t[None, :, None, None]).astype(v_bthd.dtype)
