"""Fused Pallas kernel: decode v -> moments -> update -> encode v, one pass.

The "triton" (compiled on GPU) and "interpret" backends of
``holojax.kernels.turbo_adam.fused_v_update``; the contract is
``reference.py``. Each program owns ``R`` quantisation blocks. The planar packing of
:mod:`holojax.kernels.quant` lets a block ``[bs]`` be viewed as ``[G, S]``
(``G`` codes per byte, ``S = bs / G``) so one byte column holds the codes of
the ``G`` segments: the kernel unpacks with shifts, never reshapes, and only
needs power-of-two tiles (``bits`` in 2, 4, 8), as Triton wants.

Per program::

  for each segment i:  v_i = b2 decode(byte >> bits*i) + (1-b2) g_i^2
                       update_i = (m_i (1 / bc1)) / (sqrt(v_i (1 / bc2)) + eps)
  lo, hi  = fp16-bracketed log2(min positive v), log2(max v)   (per block)
  byte    = OR_i  encode_stochastic(v_i, u(seed, index)) << bits*i

Random numbers come from :func:`holojax.kernels.quant.uniform_from_index` on the
global element index, so the kernel and :mod:`.reference` draw the same ones
(interpret mode matches the reference exactly).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from holojax.kernels import backend, quant

KERNEL_WIDTHS = (2, 4, 8)


def _is_pow2(n: int) -> bool:
  return n > 0 and (n & (n - 1)) == 0


def check_layout(*, bits: int, block_size: int) -> None:
  """Returns if the kernel handles this layout, else raises ``backend.Unsupported``.

  Example:
    >>> check_layout(bits=3, block_size=128)
    Traceback (most recent call last):
    ...
    holojax.kernels.backend.Unsupported: v_bits=3 (the kernel packs one byte per column: ...)
  """
  if bits not in KERNEL_WIDTHS:
    raise backend.Unsupported(
        f"v_bits={bits} (the kernel packs one byte per column: v_bits in {KERNEL_WIDTHS})")
  seg = block_size * bits // 8
  if not _is_pow2(block_size) or not _is_pow2(seg):
    raise backend.Unsupported(
        f"block_size={block_size} (the kernel needs a power of two >= {8 // bits * 1})")


def _kernel(sc_ref, seed_ref, g_ref, m_ref, c_ref, lo_ref, hi_ref,
            u_ref, co_ref, loo_ref, hio_ref, *, bits: int, rows: int):
  groups, seg = g_ref.shape[1], g_ref.shape[2]
  bs = groups * seg
  b2, eps, bc1, bc2 = sc_ref[0], sc_ref[1], sc_ref[2], sc_ref[3]
  seed = seed_ref[0]
  lo, hi = lo_ref[...], hi_ref[...]
  byte = c_ref[...].astype(jnp.uint32)  # [R, S]
  mask = jnp.uint32((1 << bits) - 1)

  vs = []
  for i in range(groups):
    code = (byte >> jnp.uint32(bits * i)) & mask
    v_old = quant.decode_log(code, lo, hi, bits=bits)
    g = g_ref[:, i, :]
    v = b2 * v_old + (1.0 - b2) * (g * g)
    u_ref[:, i, :] = (m_ref[:, i, :] * (1.0 / bc1)) / (jnp.sqrt(v * (1.0 / bc2)) + eps)
    vs.append(v)

  mins, maxs = zip(*[quant.row_extrema(v) for v in vs])
  new_lo, new_hi = quant.log_bounds_from_extrema(
      functools.reduce(jnp.minimum, mins), functools.reduce(jnp.maximum, maxs), lo, hi)

  row0 = pl.program_id(0) * rows
  r_idx = jax.lax.broadcasted_iota(jnp.int32, (rows, seg), 0) + row0
  c_idx = jax.lax.broadcasted_iota(jnp.int32, (rows, seg), 1)
  word = jnp.zeros((rows, seg), jnp.uint32)
  for i, v in enumerate(vs):
    index = (r_idx * bs + i * seg + c_idx).astype(jnp.uint32)
    u = quant.uniform_from_index(seed, index)
    code = quant.encode_log_with_bounds(v, u, new_lo, new_hi, bits=bits)
    word = word | (code.astype(jnp.uint32) << jnp.uint32(bits * i))
  co_ref[...] = word.astype(jnp.uint8)
  loo_ref[...] = new_lo
  hio_ref[...] = new_hi


def fused_v_update_pallas(g: jax.Array, m: jax.Array, codes: jax.Array, lo: jax.Array,
                          hi: jax.Array, scalars: jax.Array, seed: jax.Array, *,
                          bits: int, interpret: bool = False, rows: int = 32):
  """Pallas version of :func:`reference.fused_v_update_reference` (same I/O).

  ``interpret``: run in the Pallas interpreter (any backend) instead of
  compiling with Triton (GPU). Raises ``backend.Unsupported`` for a layout
  the kernel does not handle (:func:`check_layout`) or, compiled, without a
  GPU.
  """
  check_layout(bits=bits, block_size=g.shape[-1])
  if not interpret:
    backend.require_triton()
  nb, bs = g.shape
  groups = 8 // bits
  seg = bs // groups
  rows = min(rows, 1 << max(nb - 1, 0).bit_length())
  nbp = -(-nb // rows) * rows
  pad = nbp - nb
  if pad:
    g, m, codes = (jnp.pad(a, ((0, pad), (0, 0))) for a in (g, m, codes))
    lo, hi = (jnp.pad(a, (0, pad)) for a in (lo, hi))
  g3 = g.reshape(nbp, groups, seg)
  m3 = m.reshape(nbp, groups, seg)
  seeds = jnp.zeros((4,), jnp.uint32).at[0].set(seed.astype(jnp.uint32))
  sc = scalars.astype(jnp.float32)

  tile3 = pl.BlockSpec((rows, groups, seg), lambda i: (i, 0, 0))
  tile2 = pl.BlockSpec((rows, seg), lambda i: (i, 0))
  tile1 = pl.BlockSpec((rows,), lambda i: (i,))
  whole = pl.BlockSpec((4,), lambda i: (0,))
  upd, new_codes, new_lo, new_hi = pl.pallas_call(
      functools.partial(_kernel, bits=bits, rows=rows),
      out_shape=(jax.ShapeDtypeStruct((nbp, groups, seg), jnp.float32),
                 jax.ShapeDtypeStruct((nbp, seg), jnp.uint8),
                 jax.ShapeDtypeStruct((nbp,), jnp.float16),
                 jax.ShapeDtypeStruct((nbp,), jnp.float16)),
      grid=(nbp // rows,),
      in_specs=[whole, whole, tile3, tile3, tile2, tile1, tile1],
      out_specs=(tile3, tile2, tile1, tile1),
      interpret=interpret,
      name="turbo_adam_fused_v_update",
  )(sc, seeds, g3, m3, codes, lo, hi)
  upd = upd.reshape(nbp, bs)
  return upd[:nb], new_codes[:nb], new_lo[:nb], new_hi[:nb]
