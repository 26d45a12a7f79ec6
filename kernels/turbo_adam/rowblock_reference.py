"""Per-block maths of TurboAdam's default step (``jnp``): the row-block kernels' contract.

TurboAdam (:mod:`holojax.optim.turbo`) with m and v compressed, the
default CoState in units of ``sqrt(v^)`` (not faithful, no error feedback)
is per block (a row of ``bs`` elements) except two per-tensor reductions:
``alpha = sum(q r) / sum(r r)`` and the quantiles of the block magnitudes
``c``. So a step is two row passes with XLA between and after:

Pass A (:func:`pass_a_rows`), per block, from the old state::

  k       = block_shift(g, hi)                  # 0 unless |g| or sqrt(v) > 2^60
  gs      = g 2^-k;  lo, hi = f16(lo - 2k), f16(hi - 2k)
  v_old   = decode_log(codes; lo, hi)
  m_prev  = (alpha_old r_old + s_old sign_old) sqrt(v_old)    # decode_m
  m_t     = b1 m_prev + (1 - b1) gs
  u, codes', lo', hi' = fused v step(gs, m_t)  # EMA of v, update, encode v
  q       = clip(m_t / sqrt(decode_log(codes'; lo', hi')), -C, C)   (0 where v^ = 0)
  ref', levels' = encode_reference(q)
  qr_b    = sum q r,  rr_b = sum r r     # from the levels and class sums (reference_dots)

XLA: ``alpha_t = sum_b qr_b / sum_b rr_b`` over each tensor's blocks.

Pass B (:func:`pass_b_rows`), per block, the same inputs plus pass A's
outputs and ``alpha_t``: q and r recomputed (bit for bit as in pass A),
``delta = q - alpha_t r``, ``c_b = mean|delta|`` and the packed sign bits
of ``delta``. XLA after: the CoState scales from the quantiles of ``c``.

Sums along a block (means of ``|q|``, the levels, ``qr_b``, ``rr_b``,
``c_b``) take ``row_sum`` (``float32[..., bs] -> [...]``): ``jnp.sum`` over
the row (XLA's order, the default) or :func:`chunked_row_sum` (the kernels'
order: ``bs / 8``-wide chunks summed, then the chunk sums added left to
right), so a kernel can match this reference bit for bit.

Example::

  >>> import jax.numpy as jnp
  >>> nb, bs = 4, 128
  >>> z = lambda k, t=jnp.uint8: jnp.zeros((nb, k), t)
  >>> old = OldState(z(64), z(2, jnp.float16), z(32), z(2, jnp.float16), z(16),
  ...                jnp.zeros((nb,), jnp.float16), jnp.zeros((nb,), jnp.float32))
  >>> sc = step_scalars(0.9, 0.999, 1e-8, 1)
  >>> a = pass_a_rows(jnp.ones((nb, bs)), old, sc, jnp.uint32(0), v_bits=4, ref_bits=2)
  >>> round(float(a.u[0, 0]), 4), a.codes.shape, a.levels.dtype
  (1.0, (4, 64), dtype('float16'))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from holojax.kernels import quant
from holojax.kernels.turbo_adam.reference import fused_v_update_reference

Q_MAX = 2.0**14   # the largest |m| / sqrt(v^) coded (fp16 levels) when b1^2 >= b2
SHIFT_BITS = 60   # blocks with |g| or sqrt(v) above 2^60 are computed in units of 2^k


def xla_row_sum(x: jax.Array) -> jax.Array:
  """Sum over the last axis in XLA's own order."""
  return jnp.sum(x, axis=-1)


def chunked_row_sum(x: jax.Array) -> jax.Array:
  """Sum over the last axis ``bs`` as the row kernels do: ``bs / 8``-wide chunks
  summed, then the 8 chunk sums added left to right.

  Example:
    >>> float(chunked_row_sum(jnp.arange(128.0)))
    8128.0
  """
  w = x.shape[-1] // 8
  parts = jnp.sum(x.reshape(*x.shape[:-1], 8, w), axis=-1)
  out = parts[..., 0]
  for i in range(1, 8):
    out = out + parts[..., i]
  return out


# ----------------------------------------------------------------------------
# The pieces (on blocks [..., nb, bs]).


def decode_reference(codes: jax.Array, levels: jax.Array, bits: int) -> jax.Array:
  """Stored reference ``r [..., nb, bs]`` from sign (+ magnitude) codes and fp16 levels."""
  bs = codes.shape[-1] * 8 // bits
  c = quant.unpack_bits(codes, bits, bs)
  sign = 1.0 - 2.0 * (c & 1).astype(jnp.float32)
  lv = levels.astype(jnp.float32)
  if bits == 1:
    mag = lv[..., :1]
  else:
    mag = jnp.where((c >> 1) == 1, lv[..., 1:2], lv[..., 0:1])
  return sign * mag


def encode_reference(m: jax.Array, bits: int, row_sum=xla_row_sum
                     ) -> tuple[jax.Array, jax.Array]:
  """``m [..., nb, bs]`` -> ``(codes uint8, levels float16[..., nb, bits])``.

  1 bit: sign, level = mean|m| per block (the least-squares scale).
  2 bits: sign + (|m| > block mean|m|), levels = mean |m| below / above.
  """
  return encode_reference_sums(m, bits, row_sum)[:2]


def encode_reference_sums(m: jax.Array, bits: int, row_sum=xla_row_sum):
  """:func:`encode_reference`'s ``(codes, levels)`` and the per-block sums of its
  two classes, ``(s_small, s_big, n_big)`` float32 ``[..., nb]``: ``sum |m|``
  over the entries coded with level 0 / level 1 and the count of the latter
  (1 bit: every entry is level 0, ``s_big = n_big = 0``)."""
  a = jnp.abs(m)
  bs = a.shape[-1]
  neg = (m < 0).astype(jnp.uint8)
  s_all = row_sum(a)
  if bits == 1:
    zero = jnp.zeros_like(s_all)
    return (quant.pack_bits(neg, 1), (s_all / bs)[..., None].astype(jnp.float16),
            (s_all, zero, zero))
  big = a > (s_all / bs)[..., None]
  n_big = row_sum(big.astype(jnp.float32))
  s_big = row_sum(jnp.where(big, a, 0.0))
  s_small = row_sum(jnp.where(big, 0.0, a))
  l_big = s_big / jnp.maximum(n_big, 1.0)
  l_small = s_small / jnp.maximum(bs - n_big, 1.0)
  codes = neg | (big.astype(jnp.uint8) << 1)
  levels = jnp.stack([l_small, l_big], axis=-1).astype(jnp.float16)
  return quant.pack_bits(codes, 2), levels, (s_small, s_big, n_big)


def reference_dots(levels: jax.Array, sums, bs: int) -> tuple[jax.Array, jax.Array]:
  """``(sum q r, sum r r)`` per block of ``q``'s reference code ``r``, from its
  levels and :func:`encode_reference_sums`' class sums. ``r = sign(q) l_c``
  with ``l_c`` the entry's level, so ``q r = |q| l_c`` and::

    sum q r = l_0 s_small + l_1 s_big,   sum r r = (bs - n_big) l_0^2 + n_big l_1^2

  No per-entry product is summed: XLA contracts ``a b + c`` into a fused
  multiply-add depending on what it fuses, and summed per-entry products
  rounded the reference's and the interpreted kernels' ``alpha`` apart
  (tests/optim/test_turbo_flat.py, 100 steps). The row kernels return the
  class sums and leave these per-block products to this function.
  """
  s_small, s_big, n_big = sums
  lv = levels.astype(jnp.float32)
  l0, l1 = lv[..., 0], lv[..., -1]
  return l0 * s_small + l1 * s_big, (bs - n_big) * (l0 * l0) + n_big * (l1 * l1)


def costate_decode_delta(sign_codes: jax.Array, scales: jax.Array) -> jax.Array:
  """``s_b sign(delta)`` of packed signs ``[..., nb, bs/8]`` and scales ``[..., nb]``."""
  bs = sign_codes.shape[-1] * 8
  return quant.unpack_signs(sign_codes, bs) * scales.astype(jnp.float32)[..., None]


def ratio_bound(b1, b2) -> jax.Array:
  """``C`` with ``|m_t| <= C sqrt(v_t)`` for Adam's EMAs (Cauchy-Schwarz)::

    m_t^2 <= sum_k (1-b1)^2 b1^2k / ((1-b2) b2^k) v_t
          <= (1-b1)^2 / ((1-b2) (1 - b1^2/b2)) v_t

  7.27 at ``b1, b2 = 0.9, 0.999``; :data:`Q_MAX` where ``b1^2 >= b2``.
  """
  b1 = jnp.asarray(b1, jnp.float32)
  b2 = jnp.asarray(b2, jnp.float32)
  room = 1.0 - b1 * b1 / b2
  c = (1.0 - b1) / jnp.sqrt((1.0 - b2) * jnp.where(room > 0, room, 1.0))
  return jnp.where(room > 0, jnp.minimum(c, Q_MAX), Q_MAX)


def block_shift(g_blocks: jax.Array, log_hi: jax.Array) -> jax.Array:
  """Exponent ``k >= 0`` per block such that ``|g| 2^-k`` and ``sqrt(v) 2^-k``
  are below ``2^SHIFT_BITS`` (``k = 0`` for every ordinary gradient)."""
  gmax = jnp.max(jnp.abs(g_blocks), axis=-1)
  e_g = jnp.ceil(jnp.log2(jnp.where(gmax > 0, gmax, 1.0)))
  e_v = jnp.ceil(0.5 * log_hi.astype(jnp.float32))
  return jnp.maximum(jnp.maximum(e_g, e_v) - SHIFT_BITS, 0.0)


def shifted_bounds(bounds: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
  """float16 ``(lo, hi)`` of stored bounds ``[..., nb, 2]`` in units ``2^k`` of the values' root."""
  return tuple((bounds[..., i].astype(jnp.float32) - 2.0 * k).astype(jnp.float16)
               for i in (0, 1))


def decode_sqrt_v(codes: jax.Array, lo: jax.Array, hi: jax.Array, bits: int) -> jax.Array:
  """``sqrt(v^)`` of packed codes ``[..., nb, bytes]`` with (shifted) bounds ``[..., nb]``."""
  bs = codes.shape[-1] * 8 // bits
  return jnp.sqrt(quant.decode_log(quant.unpack_bits(codes, bits, bs), lo, hi, bits=bits))


def ratio(m_t: jax.Array, sqrt_v: jax.Array, q_max) -> jax.Array:
  """``clip(m_t / sqrt(v^), -C, C)``, 0 where ``v^ = 0``."""
  ok = sqrt_v > 0
  q = jnp.where(ok, m_t / jnp.where(ok, sqrt_v, 1.0), 0.0)
  return jnp.clip(q, -q_max, q_max)


# ----------------------------------------------------------------------------
# The two passes.


class OldState(NamedTuple):
  """A group's state before the step, per block (``[NB, ...]``)."""
  codes: jax.Array    # uint8[NB, bs v_bits / 8]
  bounds: jax.Array   # float16[NB, 2], stored (unshifted) log2 bounds
  ref: jax.Array      # uint8[NB, bs ref_bits / 8]
  levels: jax.Array   # float16[NB, ref_bits]
  signs: jax.Array    # uint8[NB, bs / 8]
  scales: jax.Array   # float16[NB]
  alpha: jax.Array    # float32[NB]: the block's tensor's alpha


class PassA(NamedTuple):
  """Pass A's outputs."""
  u: jax.Array       # float32[NB, bs] Adam update (before the learning rate)
  codes: jax.Array   # uint8[NB, bs v_bits / 8] new v codes
  bounds: jax.Array  # float16[NB, 2] new stored bounds
  ref: jax.Array     # uint8[NB, bs ref_bits / 8] new reference codes
  levels: jax.Array  # float16[NB, ref_bits]
  qr: jax.Array      # float32[NB] sum q r
  rr: jax.Array      # float32[NB] sum r r


def step_scalars(b1, b2, eps, count) -> jax.Array:
  """``float32[7] = (b1, 1 - b1, b2, eps, 1 - b1^t, 1 - b2^t, C)`` of step ``t =
  count`` (``1 - b1`` rounded once from the given ``b1``, a Python float or not)."""
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return jnp.stack([f32(b1), f32(1.0 - b1), f32(b2), f32(eps), 1.0 - f32(b1) ** count,
                    1.0 - f32(b2) ** count, ratio_bound(b1, b2)])


def _m_t(g, old: OldState, b1, c1, *, v_bits, ref_bits):
  """``(k, gs, lo, hi, m_t)``: pass A's first half (shared with pass B);
  ``c1 = 1 - b1``."""
  k = block_shift(g, old.bounds[..., 1])
  gs = g * jnp.exp2(-k)[..., None]
  lo, hi = shifted_bounds(old.bounds, k)
  sqrt_v_prev = decode_sqrt_v(old.codes, lo, hi, v_bits)
  q_prev = (old.alpha[..., None] * decode_reference(old.ref, old.levels, ref_bits)
            + costate_decode_delta(old.signs, old.scales))
  m_t = b1 * (q_prev * sqrt_v_prev) + c1 * gs
  return k, gs, lo, hi, m_t


def pass_a_rows(g: jax.Array, old: OldState, scalars: jax.Array, seed: jax.Array, *,
                v_bits: int, ref_bits: int, row_sum=xla_row_sum,
                row_ids: jax.Array | None = None) -> PassA:
  """Pass A (module docstring) on ``g float32[NB, bs]``; ``scalars`` from
  :func:`step_scalars`; ``seed`` the step's uint32 seed (the v draws hash
  ``row * bs + column``, ``row`` the block's position or ``row_ids int32[NB]``)."""
  b1, c1, b2, eps, bc1, bc2, q_max = (scalars[i] for i in range(7))
  k, gs, lo, hi, m_t = _m_t(g, old, b1, c1, v_bits=v_bits, ref_bits=ref_bits)
  u, codes, lo, hi = fused_v_update_reference(gs, m_t, old.codes, lo, hi,
                                              jnp.stack([b2, eps, bc1, bc2]), seed, bits=v_bits,
                                              row_ids=row_ids)
  bounds = jnp.stack([x.astype(jnp.float32) + 2.0 * k for x in (lo, hi)], axis=-1)
  q = ratio(m_t, decode_sqrt_v(codes, lo, hi, v_bits), q_max)
  ref, levels, sums = encode_reference_sums(q, ref_bits, row_sum)
  qr, rr = reference_dots(levels, sums, q.shape[-1])
  return PassA(u, codes, bounds.astype(jnp.float16), ref, levels, qr, rr)


def pass_b_rows(g: jax.Array, old: OldState, scalars: jax.Array, a: PassA, alpha: jax.Array,
                *, v_bits: int, ref_bits: int, row_sum=xla_row_sum
                ) -> tuple[jax.Array, jax.Array]:
  """Pass B (module docstring): ``(signs uint8[NB, bs/8], c float32[NB])`` of
  ``delta = q - alpha r``, with ``a`` pass A's outputs (``u``, ``qr``, ``rr``
  unused) and ``alpha float32[NB]`` the blocks' new alpha."""
  b1, c1, q_max = scalars[0], scalars[1], scalars[6]
  k, _, _, _, m_t = _m_t(g, old, b1, c1, v_bits=v_bits, ref_bits=ref_bits)
  lo, hi = shifted_bounds(a.bounds, k)
  q = ratio(m_t, decode_sqrt_v(a.codes, lo, hi, v_bits), q_max)
  delta = q - alpha[..., None] * decode_reference(a.ref, a.levels, ref_bits)
  return quant.pack_signs(delta), row_sum(jnp.abs(delta)) / delta.shape[-1]
