"""The chunked phasor memory's differentiable wiring, shared by its kernels.

``pallas_triton.py`` and ``mosaic_gpu.py`` cut T into segments and walk each
segment chunk by chunk (the maths and the work split are in
``pallas_triton.py``'s docstring). What they share is how the three launches
combine into a differentiable op; each supplies its own launches:

  totals(w, a, f)                      per-segment sums (re, im) of w e^{i(a + t f)}
  forward(v, k, q, f, c_re, c_im)      y, and with ``save`` S entering each chunk
  backward(v, k, q, g, f, S, R)        dv, dk, dq and df per program

(each also taking ``scale``, ``tiles`` and ``interpret`` by keyword; ``tiles``
has a ``segment`` length). The carries between segments are XLA's exclusive
cumulative sums of the totals: forward for S, reverse for R.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp


def exclusive_carries(tot: tuple[jax.Array, jax.Array], *, reverse: bool
                      ) -> tuple[jax.Array, ...]:
  """Exclusive cumulative sums over axis 1 (segments): what enters each segment.

  Example:
    >>> x = jnp.array([[1.0, 2.0, 3.0]])
    >>> exclusive_carries((x, x), reverse=False)[0], exclusive_carries((x, x), reverse=True)[0]
    (Array([[0., 1., 3.]], dtype=float32), Array([[5., 3., 0.]], dtype=float32))
  """
  if reverse:
    return tuple(jnp.flip(jnp.cumsum(jnp.flip(x, 1), 1), 1) - x for x in tot)
  return tuple(jnp.cumsum(x, 1) - x for x in tot)


def chunked_memory(totals: Callable, forward: Callable, backward: Callable) -> Callable:
  """``memory(v, k, q, f, scale, tiles, interpret) -> y`` with a custom VJP,
  from a kernel module's three launches (module docstring)."""

  def carries(w, a, f, scale, tiles, interpret, *, reverse):
    if w.shape[1] == tiles.segment:  # one segment: nothing carries in
      zero = jnp.zeros((w.shape[0], 1, *w.shape[2:]), jnp.float32)
      return zero, zero
    tot = totals(w, a, f, scale=scale, tiles=tiles, interpret=interpret)
    return exclusive_carries(tot, reverse=reverse)

  def run_forward(v, k, q, f, scale, tiles, interpret, *, save):
    c_re, c_im = carries(v, k, f, "none", tiles, interpret, reverse=False)
    outs = forward(v, k, q, f, c_re, c_im, save=save, scale=scale, tiles=tiles,
                   interpret=interpret)
    return outs[0], outs[1:]

  @functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
  def memory(v, k, q, f, scale, tiles, interpret):
    return run_forward(v, k, q, f, scale, tiles, interpret, save=False)[0]

  def memory_fwd(v, k, q, f, scale, tiles, interpret):
    y, (s_re, s_im) = run_forward(v, k, q, f, scale, tiles, interpret, save=True)
    return y, (v, k, q, f, s_re, s_im)

  def memory_bwd(scale, tiles, interpret, res, g):
    v, k, q, f, s_re, s_im = res
    r_re, r_im = carries(g, q, f, scale, tiles, interpret, reverse=True)
    dv, dk, dq, df = backward(v, k, q, g, f, s_re, s_im, r_re, r_im, scale=scale,
                              tiles=tiles, interpret=interpret)
    return dv, dk, dq, jnp.sum(df, axis=(0, 1)).astype(f.dtype)

  memory.defvjp(memory_fwd, memory_bwd)
  return memory
