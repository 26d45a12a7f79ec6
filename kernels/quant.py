"""Shared block quantisation: real bit packing, log-scale codes, unbiased rounding.

Every compressed optimizer state in holojax is built from these pieces:

* :func:`to_blocks` / :func:`from_blocks`: flatten a tensor, zero-pad it to a
  multiple of ``block_size`` and view it as ``[num_blocks, block_size]``.
* :func:`pack_bits` / :func:`unpack_bits`: ``b``-bit codes (b in 1, 2, 3, 4,
  6, 8) really packed into ``uint8``: ``G = lcm(b, 8) / b`` codes share
  ``B = lcm(b, 8) / 8`` bytes (4-bit: 2 codes per byte, 3-bit: 8 codes in 3
  bytes, 6-bit: 4 codes in 3 bytes). The layout is *planar*: the last axis of
  length ``n`` is cut into ``G`` contiguous segments of ``S = n / G`` codes,
  and byte plane ``k`` holds bits ``8k .. 8k+7`` of the word
  ``w_j = sum_i c[i*S + j] << (b*i)``. Planar packing needs no interleaving,
  so a kernel can (un)pack with shifts on whole segments.
* :func:`encode_log` / :func:`decode_log`: non-negative values on a per-block
  log grid. Code 0 is exactly 0; codes ``1 .. L-1`` (``L = 2**b``) are
  ``2**(lo + (k-1) (hi-lo)/(L-2))`` where ``lo``/``hi`` are the block's
  log2 min (over positive entries) and log2 max, widened by half an octave,
  snapped outwards to a quarter-octave lattice, kept from step to step while
  the data fits (see :func:`log_bounds_from_extrema`), stored as ``float16``.
  (Storing ``log2`` of the min/max rather than the min/max keeps the whole
  float32 range: a plain fp16 ``v`` would flush to zero below 6e-8.)
* Stochastic rounding unbiased in the *value* domain: ``x`` between decoded
  neighbours ``a <= x <= b`` becomes ``b`` with probability
  ``p = (x - a) / (b - a)``, so ``E[decode(encode(x))] = x`` exactly (not
  rounding in log space, which is biased by Jensen's inequality).
* :func:`hash_uniform`: counter-based uniforms ``u(seed, index)`` (a 32-bit
  integer hash), so a fused kernel and the ``jnp`` reference draw the same
  random numbers without a per-element random buffer; :func:`seed_from_key`
  turns a ``jax.random`` key into the 32-bit seed.

Example::

  >>> import jax, jax.numpy as jnp
  >>> x = jnp.abs(jax.random.normal(jax.random.key(0), (1000,)))
  >>> blocks = to_blocks(x, 128)                       # [8, 128], zero padded
  >>> u = hash_uniform(jnp.uint32(7), blocks.shape)
  >>> codes, lo, hi = encode_log(blocks, u, bits=4)
  >>> packed = pack_bits(codes, 4)                      # [8, 64] uint8
  >>> back = decode_log(unpack_bits(packed, 4, 128), lo, hi, bits=4)
  >>> from_blocks(back, x.shape).shape
  (1000,)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

PACK_WIDTHS = (1, 2, 3, 4, 6, 8)
LOG_WIDTHS = (2, 3, 4, 6, 8)
_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32


# ----------------------------------------------------------------------------
# Blocks.


def num_blocks(n: int, block_size: int) -> int:
  """Number of ``block_size`` blocks that hold ``n`` elements."""
  return -(-n // block_size)


def to_blocks(x: jax.Array, block_size: int) -> jax.Array:
  """Flattens ``x``, zero-pads to a multiple of ``block_size``: ``[nb, bs]``."""
  flat = jnp.ravel(x)
  nb = num_blocks(flat.size, block_size)
  flat = jnp.pad(flat, (0, nb * block_size - flat.size))
  return flat.reshape(nb, block_size)


def from_blocks(blocks: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Inverse of :func:`to_blocks`: drops the padding, restores ``shape``."""
  n = math.prod(shape)
  return jnp.ravel(blocks)[:n].reshape(shape)


# ----------------------------------------------------------------------------
# Bit packing.


def pack_group(bits: int) -> tuple[int, int]:
  """``(codes, bytes)`` per packing group: ``lcm(bits, 8) / bits, lcm / 8``."""
  if bits not in PACK_WIDTHS:
    raise ValueError(f"bits={bits} not supported; choose one of {PACK_WIDTHS}")
  l = math.lcm(bits, 8)
  return l // bits, l // 8


def packed_size(n: int, bits: int) -> int:
  """Bytes that ``n`` codes of ``bits`` bits occupy (``n * bits / 8``)."""
  g, b = pack_group(bits)
  if n % g:
    raise ValueError(f"{n=} codes must be a multiple of {g} for {bits}-bit packing")
  return n // g * b


def _column(values, ndim: int) -> jax.Array:
  """``uint32`` shifts shaped ``[1, ..., k, 1]`` (rank ``ndim``) for broadcasting."""
  v = np.asarray(values, dtype=np.uint32)
  return jnp.asarray(v.reshape((1,) * (ndim - 2) + (v.size, 1)))


def pack_bits(codes: jax.Array, bits: int) -> jax.Array:
  """Packs integer codes ``< 2**bits`` along the last axis into ``uint8``.

  ``codes[..., n] -> packed[..., n * bits / 8]`` (planar layout, see module
  docstring). ``n`` must be a multiple of ``lcm(bits, 8) / bits`` (at most 8).
  """
  g, nbytes = pack_group(bits)
  n = codes.shape[-1]
  seg = packed_size(n, bits) // nbytes  # codes per segment, S = n / G
  c = codes.astype(jnp.uint32).reshape(*codes.shape[:-1], g, seg)
  word = jnp.sum(c << _column(np.arange(g) * bits, c.ndim), axis=-2,
                 dtype=jnp.uint32)  # disjoint bit fields: sum == or
  out = (word[..., None, :] >> _column(np.arange(nbytes) * 8, c.ndim)) & jnp.uint32(0xFF)
  return out.astype(jnp.uint8).reshape(*codes.shape[:-1], nbytes * seg)


def unpack_bits(packed: jax.Array, bits: int, n: int) -> jax.Array:
  """Inverse of :func:`pack_bits`: ``uint8[..., n*bits/8] -> uint8[..., n]``."""
  g, nbytes = pack_group(bits)
  seg = packed_size(n, bits) // nbytes
  if packed.shape[-1] != nbytes * seg:
    raise ValueError(f"packed last axis {packed.shape[-1]} != {nbytes * seg}")
  p = packed.astype(jnp.uint32).reshape(*packed.shape[:-1], nbytes, seg)
  word = jnp.sum(p << _column(np.arange(nbytes) * 8, p.ndim), axis=-2, dtype=jnp.uint32)
  c = (word[..., None, :] >> _column(np.arange(g) * bits, p.ndim)) & jnp.uint32((1 << bits) - 1)
  return c.astype(jnp.uint8).reshape(*packed.shape[:-1], n)


# ----------------------------------------------------------------------------
# Randomness.


def hash_u32(x: jax.Array) -> jax.Array:
  """A 32-bit integer mixing hash ("lowbias32"); ``uint32 -> uint32``."""
  x = x.astype(jnp.uint32)
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def uniform_from_index(seed: jax.Array, index: jax.Array) -> jax.Array:
  """``u = hash(index * golden + hash(seed)) / 2**32`` in ``[0, 1)``, float32.

  ``seed`` is a ``uint32`` scalar, ``index`` a ``uint32`` element counter.
  Uses the top 24 bits so the float is exact.
  """
  h = hash_u32(index.astype(jnp.uint32) * jnp.uint32(0x9E3779B9) + hash_u32(seed))
  return (h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def hash_uniform(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniforms in ``[0, 1)`` of ``shape``, indexed by the row-major position."""
  idx = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)
  return uniform_from_index(jnp.asarray(seed, jnp.uint32), idx)


def hash_uniform_rows(seed: jax.Array, rows: jax.Array, width: int) -> jax.Array:
  """Uniforms ``[R, width]`` of rows ``rows int32[R]`` of a row-major ``[*, width]``
  array: row ``rows[i]`` of :func:`hash_uniform` ``(seed, (NB, width))``, whatever
  the order (or the device) the rows are computed in.

  Example:
    >>> import jax.numpy as jnp
    >>> u = hash_uniform(jnp.uint32(3), (5, 8))
    >>> bool(jnp.all(hash_uniform_rows(jnp.uint32(3), jnp.array([4, 1]), 8) == u[jnp.array([4, 1])]))
    True
  """
  idx = (rows.astype(jnp.uint32)[:, None] * jnp.uint32(width)
         + jnp.arange(width, dtype=jnp.uint32)[None, :])
  return uniform_from_index(jnp.asarray(seed, jnp.uint32), idx)


def seed_from_key(key: jax.Array) -> jax.Array:
  """A ``uint32`` scalar seed from a ``jax.random`` key (typed or raw)."""
  return jax.random.bits(key, (), jnp.uint32)


# ----------------------------------------------------------------------------
# Log-scale codes with value-domain stochastic rounding.


LOG_SNAP = 4        # block log2 bounds live on a 1/LOG_SNAP-octave lattice
LOG_HEADROOM = 0.5  # octaves added on each side when a block's grid is rebuilt


def log_bounds_from_extrema(xmin: jax.Array, xmax: jax.Array, prev_lo: jax.Array | None = None,
                            prev_hi: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """float16 ``(lo, hi)`` from a row's min positive entry and max.

  A rebuilt grid is ``lo = floor(S (log2 min - h)) / S``,
  ``hi = ceil(S (log2 max + h)) / S`` (``S = LOG_SNAP``, ``h = LOG_HEADROOM``;
  exact in float16, so the bounds bracket the data). With the previous
  bounds given, the grid is *kept* while the data fits inside it and spans
  at least half of it (minus an octave): an EMA value sitting on a level then
  stays exactly on it and only the EMA increment is rounded. A grid that
  moved with every new min/max would re-round every element at every move
  (grid jitter), and the unbiased noise would make the chain's median drift
  down while its mean stays put. Rows with no positive (normal) entry get
  ``lo = hi = 0`` and decode to all zeros.
  """
  any_pos = xmax > _TINY
  snap = float(LOG_SNAP)
  need_lo = jnp.log2(jnp.where(any_pos, xmin, 1.0))
  need_hi = jnp.log2(jnp.where(any_pos, xmax, 1.0))
  lo = jnp.floor((need_lo - LOG_HEADROOM) * snap) / snap
  hi = jnp.ceil((need_hi + LOG_HEADROOM) * snap) / snap
  if prev_lo is not None:
    plo, phi = prev_lo.astype(jnp.float32), prev_hi.astype(jnp.float32)
    keep = ((phi > plo) & (plo <= need_lo) & (need_hi <= phi)
            & (need_hi - need_lo >= 0.5 * (phi - plo) - 1.0))
    lo = jnp.where(keep, plo, lo)
    hi = jnp.where(keep, phi, hi)
  lo = jnp.where(any_pos, lo, 0.0)
  hi = jnp.where(any_pos, hi, 0.0)
  return lo.astype(jnp.float16), hi.astype(jnp.float16)


def row_extrema(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Min over positive (normal) entries and max of the last axis."""
  pos = x > _TINY
  return (jnp.min(jnp.where(pos, x, jnp.inf), axis=-1),
          jnp.max(jnp.where(pos, x, _TINY), axis=-1))


def log_bounds(x: jax.Array, prev_lo: jax.Array | None = None,
               prev_hi: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-row float16 ``(lo, hi)``: bracketing ``log2`` of min positive and max.

  ``x``: ``float32[..., bs]`` non-negative. Rows with no positive (normal)
  entry get ``lo = hi = 0`` and decode to all zeros.
  """
  return log_bounds_from_extrema(*row_extrema(x), prev_lo, prev_hi)


def log_level(k: jax.Array, lo: jax.Array, step: jax.Array) -> jax.Array:
  """Decoded value of code ``k`` (``k >= 1``): ``2**(lo + (k-1) step)``."""
  return jnp.exp2(lo + (k.astype(jnp.float32) - 1.0) * step)


def _log_step(lo: jax.Array, hi: jax.Array, bits: int) -> jax.Array:
  return (hi.astype(jnp.float32) - lo.astype(jnp.float32)) / float((1 << bits) - 2)


def decode_log(codes: jax.Array, lo: jax.Array, hi: jax.Array, *, bits: int) -> jax.Array:
  """``codes[..., bs]`` with per-row ``lo``/``hi`` (``[...]``) -> float32 values."""
  lo32 = lo.astype(jnp.float32)[..., None]
  step = _log_step(lo, hi, bits)[..., None]
  val = log_level(codes, lo32, step)
  return jnp.where(codes == 0, 0.0, val)


def encode_log_with_bounds(x: jax.Array, u: jax.Array, lo: jax.Array, hi: jax.Array,
                           *, bits: int) -> jax.Array:
  """Unbiased stochastic log-grid codes of ``x`` for given row bounds.

  Let ``a <= x <= b`` be the neighbouring levels (``a = 0`` below the first
  level). Returns the code of ``b`` if ``u < (x - a) / (b - a)`` else of
  ``a``. ``u``: uniforms in ``[0, 1)`` shaped like ``x``.
  """
  n_levels = 1 << bits
  lo32 = lo.astype(jnp.float32)[..., None]
  step = _log_step(lo, hi, bits)[..., None]
  safe_step = jnp.where(step > 0, step, 1.0)
  first = jnp.exp2(lo32)
  pos = (jnp.log2(jnp.maximum(x, _TINY)) - lo32) / safe_step
  k = jnp.clip(jnp.floor(pos), 0, n_levels - 3).astype(jnp.int32)
  k = jnp.where(step > 0, k, 0)
  below = x < first
  code_lo = jnp.where(below, 0, k + 1)
  code_hi = jnp.where(below, 1, k + 2)
  a = jnp.where(below, 0.0, log_level(code_lo, lo32, step))
  b = log_level(code_hi, lo32, step)
  gap = b - a
  p = jnp.where(gap > 0, (x - a) / jnp.where(gap > 0, gap, 1.0), 0.0)
  p = jnp.clip(p, 0.0, 1.0)
  return jnp.where(u < p, code_hi, code_lo).astype(jnp.uint8)


def encode_log(x: jax.Array, u: jax.Array, *, bits: int, prev_lo: jax.Array | None = None,
               prev_hi: jax.Array | None = None):
  """Row-wise log-scale stochastic encode: ``(codes uint8, lo f16, hi f16)``.

  ``x``: ``float32[nb, bs]`` non-negative; ``u``: uniforms like ``x``;
  ``prev_lo``/``prev_hi``: the row bounds of the last encode (sticky grid,
  see :func:`log_bounds_from_extrema`). ``E[decode_log(*encode_log(x, u, bits))] == x`` over ``u`` (up to float
  rounding of the levels).
  """
  if bits not in LOG_WIDTHS:
    raise ValueError(f"bits={bits} not supported; choose one of {LOG_WIDTHS}")
  x = x.astype(jnp.float32)
  lo, hi = log_bounds(x, prev_lo, prev_hi)
  return encode_log_with_bounds(x, u, lo, hi, bits=bits), lo, hi


# ----------------------------------------------------------------------------
# Signs.


def pack_signs(x: jax.Array) -> jax.Array:
  """1 bit per element (1 = negative) along the last axis: ``uint8[..., n/8]``."""
  return pack_bits((x < 0).astype(jnp.uint8), 1)


def unpack_signs(packed: jax.Array, n: int) -> jax.Array:
  """``+1.0`` / ``-1.0`` float32 from :func:`pack_signs`."""
  neg = unpack_bits(packed, 1, n)
  return 1.0 - 2.0 * neg.astype(jnp.float32)
