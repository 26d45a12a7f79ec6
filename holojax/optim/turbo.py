"""TurboAdam: Adam with a log-scale n-bit v and a sign-coded "CoState" m.

Layout: a tensor ``(*lead, L)`` is cut into blocks of ``block_size`` along
its last axis (:mod:`holojax.optim.layout`), so the state keeps the leading
axes and is sharded like the parameter.

Second moment (per block, really packed, see :mod:`holojax.kernels.quant`)::

  v_{t-1} = decode(codes, lo, hi)                      # log grid, code 0 == 0
  v_t     = b2 v_{t-1} + (1 - b2) g_t^2                # EMA in the decoded domain
  codes   = stochastic_round(v_t)                      # E[decode(codes)] == v_t

``lo``/``hi`` are float16 ``log2`` bounds, so the codes cover any float32
gradient. The step runs in per-block power-of-two units ``2^k`` (``k = 0``
unless a block's ``|g|`` or ``sqrt(v)`` exceeds ``2^60``), so ``g^2`` never
overflows: every finite gradient gives a finite state and update.

First moment, default: **CoState in units of sqrt(v)**. With the float32
``m_t = b1 m^_{t-1} + (1 - b1) g_t`` and the *stored* ``v^_t`` (after
re-encoding), the state codes the unit-free ratio ::

  q_t     = clip(m_t / sqrt(v^_t), -C, C)     (0 where v^_t = 0)
  q_t     = alpha r + delta,     alpha = (q_t . r) / (r . r)
  r       = m_ref_bits-bit code of q_t: sign (+ for 2 bits a magnitude bit
            choosing between two fp16 levels per block: the means of |q|
            below / above the block mean)
  delta^  = s_b sign(delta)      per block b, with c_b = mean|delta_b|:
            null  (c_b <  P_null):            s_b = 0
            phase (P_null <= c_b < P_amp):    s_b = mean of c over phase blocks
            amp   (c_b >= P_amp):             s_b = c_b
  m^_t    = (alpha r + delta^) sqrt(v^_t)

``P_null``/``P_amp`` are the ``null_pct``/``amp_pct`` quantiles of ``c`` over
the tensor's blocks, found by bisection on the float bits (counts, no sort,
so they work on sharded tensors). Adam's EMAs satisfy ``|m_t| <= C sqrt(v_t)``
(Cauchy-Schwarz, :func:`ratio_bound`; ``C = 7.27`` at b1=0.9, b2=0.999), so
``q`` is O(1) in every element whatever the gradient's scale: blocks (and
elements) whose gradients differ by orders of magnitude are coded equally
well, and no fp16 field can overflow. The clip enforces the same bound
against the quantised ``v^``: where stochastic rounding put ``v^`` far below
``v`` (coarse 2-bit grids), an unclipped ``q`` would inflate ``m`` and the
next update. (Coding ``m`` itself, the previous default, shared one "phase"
scale between blocks of very different magnitude: on a tensor whose rows'
gradient scales span 1e-4..10, small-gradient rows got updates 30x Adam's and
the update's cosine with Adam's was 0.03; now 0.93.)

* ``faithful=True`` is the original CoState, in units of ``m``: ``r = g_t``
  at encode time, and because ``g_t`` is not stored the next step decodes
  with the *new* gradient, ``m^_t = alpha_t g_{t+1} + delta^_t`` (not an EMA
  of gradients; fp16 scales overflow beyond 65504, as in the original).
* ``error_feedback=True`` adds the last coding error of ``delta`` before
  coding (a float32 buffer: +32 bits/param).

The step is Adam's: ``u = (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)``
(``v_t``/``m_t`` before re-encoding). 1-D tensors and tensors with fewer
than ``min_m_compress_elements`` keep m dense float32; 1-D tensors, and
tensors whose packed v would not be smaller, keep v dense as float32
``sqrt(v)`` (:mod:`holojax.optim.moments`). Non-finite gradients are
handled by :func:`turbo_adam` (``optax.apply_if_finite`` around the whole
chain), not here.

State layout (default, 4-bit v, 2-bit reference, block 128), bits/param::

  v:  4 (codes) + 2*16/128 (log2 lo, hi)                          = 4.25
  m:  2 (ref codes) + 2*16/128 (ref levels) + 1 (delta signs)
      + 16/128 (delta scale)                                      = 3.375
  per tensor: alpha float32; per state: count int32, key uint32[2]

Example::

  >>> import jax, jax.numpy as jnp, optax
  >>> params = {"w": jnp.ones((64, 128))}
  >>> opt = turbo_adam(1e-2, min_m_compress_elements=1024)
  >>> state = opt.init(params)
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> updates, state = opt.update(grads, state, params)
  >>> bool(jnp.allclose(updates["w"], -1e-2, rtol=1e-3))
  True

References:
  Kingma & Ba, Adam (2015); Dettmers et al., 8-bit Optimizers via Block-wise
  Quantization (2022); TurboAdam 0.1.0 README (D. Kogan, 2026).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from holojax.kernels import turbo_adam as kernels
from holojax.optim import layout as lay
from holojax.kernels import quant
from holojax.optim import moments, validate

# Arguments that set shapes or the code path: static under
# ``optax.inject_hyperparams(turbo_adam, static_args=STATIC_ARGS)``.
STATIC_ARGS = ("block_size", "v_bits", "compress_m", "compress_v", "error_feedback",
               "min_m_compress_elements", "faithful", "m_ref_bits", "implementation")

Q_MAX = 2.0**14   # the largest |m| / sqrt(v^) coded (fp16 levels) when b1^2 >= b2
SHIFT_BITS = 60   # blocks with |g| or sqrt(v) above 2^60 are computed in units of 2^k


class PackedV(NamedTuple):
  """Log-scale v; each field a tree like the params (``optax.MaskedNode()``,
  which holds no array, where v is dense)."""
  codes: Any   # uint8[*lead, nb, block_size * v_bits / 8], planar packed
  bounds: Any  # float16[*lead, nb, 2]: log2 of the block's grid (lo, hi)


class CoStateM(NamedTuple):
  """CoState m; each field a tree like the params (``optax.MaskedNode()`` where unused)."""
  alpha: Any   # float32[], projection coefficient (per tensor)
  ref: Any     # uint8[*lead, nb, block_size * m_ref_bits / 8] (default mode)
  levels: Any  # float16[*lead, nb, m_ref_bits] (default mode)
  signs: Any   # uint8[*lead, nb, block_size / 8], 1 = negative delta
  scales: Any  # float16[*lead, nb]: 0 null / shared phase / own amplitude
  err: Any     # float32[*lead, nb, block_size] (error_feedback only)


class ScaleByTurboAdamState(NamedTuple):
  """State of :func:`scale_by_turbo_adam`."""
  count: jax.Array  # int32[], steps taken
  key: jax.Array    # uint32[2] (raw key data), split every step
  mu: Any           # per leaf: float32[param shape] where m is dense, else MaskedNode()
  nu: Any           # per leaf: float32[param shape] sqrt(v) where v is dense, else MaskedNode()
  v: PackedV
  m: CoStateM


@dataclasses.dataclass(frozen=True)
class TurboAdamLayout:
  """Static (shape-setting) configuration, validated in ``__post_init__``."""
  block_size: int = 128
  v_bits: int = 4
  compress_m: bool = True
  compress_v: bool = True
  error_feedback: bool = False
  min_m_compress_elements: int = 4096
  faithful: bool = False
  m_ref_bits: int = 2

  def __post_init__(self):
    validate.static_int("block_size", self.block_size, 8)
    if self.block_size % 8:
      raise ValueError(f"block_size={self.block_size!r} must be a positive multiple of 8 "
                       "(whole bytes of packed codes per block)")
    validate.static_int("v_bits", self.v_bits, choices=quant.LOG_WIDTHS)
    validate.static_int("m_ref_bits", self.m_ref_bits, choices=(1, 2))
    validate.static_int("min_m_compress_elements", self.min_m_compress_elements, 0)
    for name in ("compress_m", "compress_v", "error_feedback", "faithful"):
      validate.static_bool(name, getattr(self, name))

  def m_compressed(self, shape) -> bool:
    n = math.prod(shape)
    return self.compress_m and len(shape) >= 2 and n > 0 and n >= self.min_m_compress_elements

  def v_compressed(self, shape) -> bool:
    if not self.compress_v or len(shape) < 2 or math.prod(shape) == 0:
      return False
    rows = math.prod(shape[:-1]) * lay.num_blocks(shape[-1], self.block_size)
    return rows * (self.block_size * self.v_bits // 8 + 4) < 4 * math.prod(shape)

  def blocked(self, shape) -> bool:
    return self.m_compressed(shape) or self.v_compressed(shape)


# ----------------------------------------------------------------------------
# Quantiles without a sort.


def order_statistics(x: jax.Array, ks: jax.Array) -> jax.Array:
  """The ``k``-th smallest entries (0-based) of non-negative ``x``, for each ``k``.

  Bisection on the float32 bit patterns (monotone for ``x >= 0``): 32
  rounds of counting, so it is exact, needs no sort and works on sharded
  ``x`` (the counts are all-reduced). ``ks``: int32 vector, may be traced.
  """
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
  need = ks + 1  # the answer is the smallest t with count(bits <= t) >= k + 1

  def body(_, lohi):
    lo, hi = lohi
    mid = lo + (hi - lo) // 2
    cnt = jnp.stack([jnp.sum(bits <= mid[j], dtype=jnp.int32) for j in range(ks.shape[0])])
    ok = cnt >= need
    return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

  lo = jnp.full(ks.shape, -1, jnp.int32)
  hi = jnp.full(ks.shape, 0x7F800000, jnp.int32)  # bits of +inf: count == x.size
  _, hi = jax.lax.fori_loop(0, 32, body, (lo, hi))
  return jax.lax.bitcast_convert_type(hi, jnp.float32)


def quantiles(x: jax.Array, qs) -> jax.Array:
  """``jnp.quantile(x, qs)`` (linear interpolation) for non-negative ``x``, sort-free.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([4.0, 0.0, 3.0, 1.0, 2.0])
    >>> quantiles(x, (0.1, 0.5, 0.9)).tolist()
    [0.4000000059604645, 2.0, 3.5999999046325684]
  """
  n = x.size
  pos = jnp.clip(jnp.stack([jnp.asarray(q, jnp.float32) for q in qs]) * (n - 1), 0.0, n - 1)
  lo = jnp.floor(pos).astype(jnp.int32)
  stats = order_statistics(x, jnp.concatenate([lo, jnp.minimum(lo + 1, n - 1)]))
  a, b = stats[:len(qs)], stats[len(qs):]
  return a + (pos - lo) * (b - a)


# ----------------------------------------------------------------------------
# CoState m (on blocks [..., nb, bs]).


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


def encode_reference(m: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
  """``m [..., nb, bs]`` -> ``(codes uint8, levels float16[..., nb, bits])``.

  1 bit: sign, level = mean|m| per block (the least-squares scale).
  2 bits: sign + (|m| > block mean|m|), levels = mean |m| below / above.
  """
  a = jnp.abs(m)
  neg = (m < 0).astype(jnp.uint8)
  if bits == 1:
    return quant.pack_bits(neg, 1), jnp.mean(a, axis=-1, keepdims=True).astype(jnp.float16)
  big = a > jnp.mean(a, axis=-1, keepdims=True)
  n_big = jnp.sum(big, axis=-1, keepdims=True)
  n_small = a.shape[-1] - n_big
  l_big = jnp.sum(jnp.where(big, a, 0.0), axis=-1, keepdims=True) / jnp.maximum(n_big, 1)
  l_small = jnp.sum(jnp.where(big, 0.0, a), axis=-1, keepdims=True) / jnp.maximum(n_small, 1)
  codes = neg | (big.astype(jnp.uint8) << 1)
  levels = jnp.concatenate([l_small, l_big], axis=-1).astype(jnp.float16)
  return quant.pack_bits(codes, 2), levels


def costate_code(delta: jax.Array, null_pct, amp_pct) -> tuple[jax.Array, jax.Array]:
  """CoState sign code of ``delta [..., nb, bs]``: ``(sign_codes, scales float16[..., nb])``.

  Block magnitude ``c_b = mean|delta_b|``; blocks below the ``null_pct``
  quantile of ``c`` (over every block of the tensor) decode to 0, blocks at
  or above the ``amp_pct`` quantile keep their own scale ``c_b``, the rest
  share the mean ``c`` of their class.
  """
  c = jnp.mean(jnp.abs(delta), axis=-1)
  t_null, t_amp = quantiles(c, (null_pct, amp_pct))
  null = c < t_null
  amp = (c >= t_amp) & ~null
  phase = ~null & ~amp
  s_phase = jnp.sum(jnp.where(phase, c, 0.0)) / jnp.maximum(jnp.sum(phase), 1)
  scales = jnp.where(null, 0.0, jnp.where(amp, c, s_phase)).astype(jnp.float16)
  return quant.pack_signs(delta), scales


def costate_decode_delta(sign_codes: jax.Array, scales: jax.Array) -> jax.Array:
  bs = sign_codes.shape[-1] * 8
  return quant.unpack_signs(sign_codes, bs) * scales.astype(jnp.float32)[..., None]


class _MLeaf(NamedTuple):
  """One tensor's CoState fields (a view into :class:`CoStateM`)."""
  alpha: jax.Array
  ref: jax.Array
  levels: jax.Array
  signs: jax.Array
  scales: jax.Array
  err: jax.Array


def decode_m(ms: _MLeaf, g_blocks: jax.Array, layout: TurboAdamLayout) -> jax.Array:
  """Previous code ``[..., nb, bs]``: ``q^`` (default) or ``m^`` (faithful, needs ``g``)."""
  delta = costate_decode_delta(ms.signs, ms.scales)
  if layout.faithful:
    return ms.alpha * g_blocks + delta
  return ms.alpha * decode_reference(ms.ref, ms.levels, layout.m_ref_bits) + delta


def encode_m(q: jax.Array, g_blocks: jax.Array, ms: _MLeaf, layout: TurboAdamLayout,
             null_pct, amp_pct) -> _MLeaf:
  """CoState code of ``q [..., nb, bs]`` (``m`` itself when faithful; see module docstring)."""
  if layout.faithful:
    ref_codes, ref_levels = ms.ref, ms.levels  # unused, size 0
    r = g_blocks
  else:
    ref_codes, ref_levels = encode_reference(q, layout.m_ref_bits)
    r = decode_reference(ref_codes, ref_levels, layout.m_ref_bits)
  rr = jnp.sum(r * r)
  alpha = jnp.where(rr > 0, jnp.sum(q * r) / jnp.where(rr > 0, rr, 1.0), 0.0)
  delta = q - alpha * r
  if layout.error_feedback:
    delta = delta + ms.err
  sign_codes, scales = costate_code(delta, null_pct, amp_pct)
  err = delta - costate_decode_delta(sign_codes, scales) if layout.error_feedback else ms.err
  return _MLeaf(alpha.astype(jnp.float32), ref_codes, ref_levels, sign_codes, scales, err)


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


# ----------------------------------------------------------------------------
# v in per-block power-of-two units.


def block_shift(g_blocks: jax.Array, log_hi: jax.Array) -> jax.Array:
  """Exponent ``k >= 0`` per block such that ``|g| 2^-k`` and ``sqrt(v) 2^-k``
  are below ``2^SHIFT_BITS`` (``k = 0`` for every ordinary gradient)."""
  gmax = jnp.max(jnp.abs(g_blocks), axis=-1)
  e_g = jnp.ceil(jnp.log2(jnp.where(gmax > 0, gmax, 1.0)))
  e_v = jnp.ceil(0.5 * log_hi.astype(jnp.float32))
  return jnp.maximum(jnp.maximum(e_g, e_v) - SHIFT_BITS, 0.0)


def decode_sqrt_v(codes: jax.Array, lo: jax.Array, hi: jax.Array, bits: int) -> jax.Array:
  """``sqrt(v^)`` of packed codes ``[..., nb, bytes]`` with (shifted) bounds ``[..., nb]``."""
  bs = codes.shape[-1] * 8 // bits
  return jnp.sqrt(quant.decode_log(quant.unpack_bits(codes, bits, bs), lo, hi, bits=bits))


# ----------------------------------------------------------------------------
# The transformation.


def _init_leaf(p, layout: TurboAdamLayout):
  """Per-leaf state ``(mu, nu, (v codes, v bounds), m fields)``, built from
  ``zeros_like(p)`` so every array carries the parameter's sharding; unused
  fields are ``optax.MaskedNode()`` (no array: orbax and the accounting see
  nothing)."""
  shape = tuple(p.shape)
  z = jnp.zeros_like(p, dtype=jnp.float32)
  empty = lambda dtype: optax.MaskedNode()  # no leaves: nothing stored
  bs = layout.block_size
  mc, vc = layout.m_compressed(shape), layout.v_compressed(shape)
  zb = lay.row_blocks(lay.reshard(z, lay.work_spec(z, bs)), bs) if (mc or vc) else None
  per_block = lambda k, dtype: jnp.zeros_like(zb[..., :k], dtype=dtype)
  mu = empty(jnp.float32) if mc else z
  nu = empty(jnp.float32) if vc else jnp.zeros_like(z)  # never one buffer twice: donation
  v = ((per_block(bs * layout.v_bits // 8, jnp.uint8), per_block(2, jnp.float16)) if vc
       else (empty(jnp.uint8), empty(jnp.float16)))
  if mc:
    ref = not layout.faithful
    m = _MLeaf(
        alpha=jnp.zeros((), jnp.float32),
        ref=per_block(bs * layout.m_ref_bits // 8, jnp.uint8) if ref else empty(jnp.uint8),
        levels=per_block(layout.m_ref_bits, jnp.float16) if ref else empty(jnp.float16),
        signs=per_block(bs // 8, jnp.uint8),
        scales=jnp.zeros_like(zb[..., 0], dtype=jnp.float16),
        err=zb if layout.error_feedback else empty(jnp.float32))
  else:
    m = _MLeaf(empty(jnp.float32), empty(jnp.uint8), empty(jnp.float16), empty(jnp.uint8),
               empty(jnp.float16), empty(jnp.float32))
  return mu, nu, v, m


def _leaf_update(g, mu, nu, v, ms: _MLeaf, seed, count, *, layout, impl, b1, b2, eps,
                 null_pct, amp_pct):
  """One tensor: ``(update, mu, nu, (codes, bounds), m fields)``.

  Blocked tensors are computed on ``[*lead, nb, bs]`` blocks in per-block
  units ``2^k`` (:func:`block_shift`): ``gs = g 2^-k``, ``m_t`` likewise.
  """
  shape, bs = tuple(g.shape), layout.block_size
  mc, vc = layout.m_compressed(shape), layout.v_compressed(shape)
  if not (mc or vc):
    u, mu, nu = moments.dense_adam(g, mu, nu, b1=b1, b2=b2, eps=eps, count=count)
    return u, mu, nu, v, ms

  spec = lay.work_spec(g, bs)  # None unless the last axis' shards are not whole blocks
  to_work = lambda x: lay.reshard(x, spec)
  to_param = (lambda x: x) if spec is None else (
      lambda x: lay.reshard(x, jax.sharding.PartitionSpec(*lay.explicit_spec(g))))
  blocks = lambda x: lay.row_blocks(to_work(x), bs)
  unblock = lambda xb: to_param(lay.from_row_blocks(xb, shape[-1]))
  gb = blocks(g.astype(jnp.float32))                              # [*lead, nb, bs]
  bc1 = 1.0 - jnp.asarray(b1, jnp.float32) ** count
  bc2 = 1.0 - jnp.asarray(b2, jnp.float32) ** count
  units = mc and not layout.faithful  # m coded in units of sqrt(v^)

  if vc:
    codes, bounds = v
    k = block_shift(gb, bounds[..., 1])                           # [*lead, nb]
    unit = jnp.exp2(-k)[..., None]
    lo, hi = ((bounds[..., i].astype(jnp.float32) - 2.0 * k).astype(jnp.float16)
              for i in (0, 1))
    if units:
      sqrt_v_prev = decode_sqrt_v(codes, lo, hi, layout.v_bits)
  else:
    unit = 1.0
    s_prev = blocks(nu)
    if units:
      sqrt_v_prev = s_prev
  gs = gb * unit

  if not mc:
    m_prev = blocks(mu) * unit
  elif layout.faithful:  # alpha g_t + delta^, delta^ stored in units of m
    m_prev = ms.alpha * gs + costate_decode_delta(ms.signs, ms.scales) * unit
  else:
    m_prev = decode_m(ms, gs, layout) * sqrt_v_prev
  m_t = b1 * m_prev + (1.0 - b1) * gs

  if vc:
    scalars = jnp.stack([jnp.asarray(x, jnp.float32) for x in (b2, eps, bc1, bc2)])
    ub, codes, lo, hi = _fused(gs, m_t, codes, lo, hi, scalars, seed, layout, impl)
    bounds = jnp.stack([x.astype(jnp.float32) + 2.0 * k for x in (lo, hi)], axis=-1)
    v = (codes, bounds.astype(jnp.float16))
    if units:
      sqrt_v_new = decode_sqrt_v(codes, lo, hi, layout.v_bits)
  else:
    s_new = moments.rms_moment(gb, s_prev, b2)                    # dense sqrt(v_t)
    ub = (m_t / bc1) / (s_new / jnp.sqrt(bc2) + eps)
    nu = unblock(s_new)
    sqrt_v_new = s_new

  if not mc:
    mu = unblock(m_t / unit)
  elif layout.faithful:
    ms = encode_m(m_t / unit, gb, ms, layout, null_pct, amp_pct)
  else:
    ok = sqrt_v_new > 0
    q = jnp.where(ok, m_t / jnp.where(ok, sqrt_v_new, 1.0), 0.0)
    q_max = ratio_bound(b1, b2)
    ms = encode_m(jnp.clip(q, -q_max, q_max), gs, ms, layout, null_pct, amp_pct)
  return unblock(ub), mu, nu, v, ms


def _fused(gs, m_t, codes, lo, hi, scalars, seed, layout, impl):
  """The kernel's fused v step on ``[*lead, nb, bs]`` blocks."""
  if impl == "xla" or gs.ndim == 2:
    return kernels.fused_v_update(gs, m_t, codes, lo, hi, scalars, seed, bits=layout.v_bits,
                                  implementation=impl)
  lead = gs.shape[:-1]
  flat = lambda a: a.reshape(math.prod(a.shape[:len(lead)]), *a.shape[len(lead):])
  u, c, l2, h2 = kernels.fused_v_update(flat(gs), flat(m_t), flat(codes), flat(lo), flat(hi),
                                        scalars, seed, bits=layout.v_bits,
                                        implementation=impl)
  return (u.reshape(gs.shape), c.reshape(codes.shape), l2.reshape(lo.shape),
          h2.reshape(hi.shape))


def _state_shapes_ok(g, mu, nu, v, layout) -> bool:
  """Whether the per-leaf state was built for a parameter of ``g``'s shape."""
  shape = tuple(g.shape)
  shape_of = lambda x: tuple(x.shape) if hasattr(x, "shape") else None
  mc, vc = layout.m_compressed(shape), layout.v_compressed(shape)
  if (not mc and shape_of(mu) != shape) or (not vc and shape_of(nu) != shape):
    return False
  if vc:
    want = shape[:-1] + (lay.num_blocks(shape[-1], layout.block_size), 2)
    return shape_of(v[1]) == want
  return True


def scale_by_turbo_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                        block_size: int = 128, v_bits: int = 4, compress_m: bool = True,
                        compress_v: bool = True, null_pct: float = 0.10,
                        amp_pct: float = 0.90, error_feedback: bool = False,
                        min_m_compress_elements: int = 4096, faithful: bool = False,
                        seed: int = 0, m_ref_bits: int = 2,
                        implementation: str | None = None
                        ) -> optax.GradientTransformationExtraArgs:
  """Rescales updates by TurboAdam's compressed moments (see module docstring).

  Args:
    b1, b2, eps: Adam's decay rates and denominator epsilon.
    block_size: elements per quantisation block along the last axis
      (positive multiple of 8).
    v_bits: bits per v code, one of 2, 3, 4, 6, 8.
    compress_m / compress_v: compress the first / second moment.
    null_pct, amp_pct: CoState block-magnitude quantiles, ``0 <= null < amp <= 1``.
    error_feedback: carry the CoState coding error (float32 buffer).
    min_m_compress_elements: smaller tensors keep m dense float32.
    faithful: the original CoState (decoded with the current gradient).
    seed: seed of the stochastic-rounding key (a runtime value: it only
      initialises ``key`` in the state).
    m_ref_bits: bits of the stored reference code of m (1 or 2; default mode).
    implementation: backend of the fused v step: None (the default,
      ``"xla"``), ``"xla"``, ``"triton"``, ``"interpret"``, ``"pallas"``
      (the compiled Pallas GPU backends) or a sequence tried in order; see
      :func:`holojax.kernels.turbo_adam.fused_v_update`. Chosen once, here.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Shape-setting arguments
    (:data:`STATIC_ARGS`, exported as
    ``holojax.optim.TURBO_ADAM_STATIC_ARGS``) must be ``static_args`` under
    ``optax.inject_hyperparams``::

      optax.inject_hyperparams(turbo_adam, static_args=STATIC_ARGS)(learning_rate=1e-3)

  Raises:
    ValueError: an argument is out of range, or (at ``update``) a gradient's
      shape does not match its parameter (the message names the leaf).
    TypeError: an argument has the wrong type (``v_bits=4.0``, a string
      rate), or (at ``init``) a parameter is not floating point.
  """
  layout = TurboAdamLayout(block_size, v_bits, compress_m, compress_v, error_feedback,
                           min_m_compress_elements, faithful, m_ref_bits)
  validate.check_real("b1", b1, 0.0, 1.0, hi_open=True)
  validate.check_real("b2", b2, 0.0, 1.0, hi_open=True)
  validate.check_real("eps", eps, 0.0)
  validate.check_real("null_pct", null_pct, 0.0, 1.0, hi_open=True)
  validate.check_real("amp_pct", amp_pct, 0.0, 1.0, lo_open=True)
  validate.check_seed("seed", seed)
  if not isinstance(null_pct, jax.core.Tracer) and not isinstance(amp_pct, jax.core.Tracer) \
      and float(null_pct) >= float(amp_pct):
    raise ValueError(f"null_pct={null_pct!r} must be < amp_pct={amp_pct!r} "
                     "(need 0 <= null_pct < amp_pct <= 1)")
  impl = kernels.select_implementation(bits=v_bits, block_size=block_size,
                                       implementation=implementation)
  if impl != "xla" and not compress_v:
    raise ValueError(f"implementation={implementation!r} picks the kernel {impl!r}, which "
                     "needs compress_v=True (it updates the packed v)")

  def init_fn(params):
    validate.check_float_params("turbo_adam", params)
    leaves = [_init_leaf(p, layout) for p in jax.tree.leaves(params)]
    treedef = jax.tree.structure(params)
    field = lambda f: treedef.unflatten([f(x) for x in leaves])
    return ScaleByTurboAdamState(
        count=jnp.zeros((), jnp.int32),
        key=jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32),
        mu=field(lambda x: x[0]), nu=field(lambda x: x[1]),
        v=PackedV(field(lambda x: x[2][0]), field(lambda x: x[2][1])),
        m=CoStateM(*[field(lambda x, i=i: x[3][i]) for i in range(6)]))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is not None:
      validate.check_param_shapes("turbo_adam", updates, params)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    flat = lambda tree: treedef.flatten_up_to(tree)
    mus, nus = flat(state.mu), flat(state.nu)
    vs = list(zip(flat(state.v.codes), flat(state.v.bounds)))
    ms = [_MLeaf(*x) for x in zip(*[flat(f) for f in state.m])]
    count = optax.safe_increment(state.count)
    key, sub = jax.random.split(jax.random.wrap_key_data(state.key))

    out = []
    for i, (path, g) in enumerate(paths_leaves):
      if not _state_shapes_ok(g, mus[i], nus[i], vs[i], layout):
        validate.raise_state_mismatch("turbo_adam", path, g.shape)
      seed_i = quant.seed_from_key(jax.random.fold_in(sub, i))
      u, mu, nu, v, m = _leaf_update(g, mus[i], nus[i], vs[i], ms[i], seed_i, count,
                                     layout=layout, impl=impl, b1=b1, b2=b2, eps=eps,
                                     null_pct=null_pct, amp_pct=amp_pct)
      out.append((u.astype(g.dtype), mu, nu, v, m))

    field = lambda f: treedef.unflatten([f(x) for x in out])
    new_state = ScaleByTurboAdamState(
        count=count, key=jax.random.key_data(key).astype(jnp.uint32),
        mu=field(lambda x: x[1]), nu=field(lambda x: x[2]),
        v=PackedV(field(lambda x: x[3][0]), field(lambda x: x[3][1])),
        m=CoStateM(*[field(lambda x, i=i: x[4][i]) for i in range(6)]))
    return field(lambda x: x[0]), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def turbo_adam(learning_rate: optax.ScalarOrSchedule = 1e-3, b1: float = 0.9,
               b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
               block_size: int = 128, v_bits: int = 4, compress_m: bool = True,
               compress_v: bool = True, null_pct: float = 0.10, amp_pct: float = 0.90,
               error_feedback: bool = False, min_m_compress_elements: int = 4096,
               faithful: bool = False, seed: int = 0, m_ref_bits: int = 2,
               implementation: str | None = None, mask: Any = None
               ) -> optax.GradientTransformationExtraArgs:
  """TurboAdam(W): ``apply_if_finite(chain(scale_by_turbo_adam, add_decayed_weights, -lr))``.

  With ``compress_m=False, compress_v=False`` this is ``optax.adamw`` (with
  a skip on non-finite gradients). A non-finite gradient skips the whole
  step: no decay, no schedule step, no state change; the returned state's
  ``total_notfinite`` counts the skips. See :func:`scale_by_turbo_adam`
  for the arguments and the module docstring for the maths and the state
  layout; ``mask`` is ``optax.add_decayed_weights``'.

  Example::

    >>> import jax.numpy as jnp, optax
    >>> opt = optax.chain(optax.clip_by_global_norm(1.0), turbo_adam(1e-3, weight_decay=0.01))
    >>> state = opt.init({"w": jnp.zeros((256, 256))})
    >>> int(state[1].total_notfinite)
    0
  """
  validate.check_scalar_or_schedule("learning_rate", learning_rate)
  validate.check_real("weight_decay", weight_decay, 0.0)
  return moments.skip_non_finite(optax.chain(
      scale_by_turbo_adam(b1=b1, b2=b2, eps=eps, block_size=block_size, v_bits=v_bits,
                          compress_m=compress_m, compress_v=compress_v, null_pct=null_pct,
                          amp_pct=amp_pct, error_feedback=error_feedback,
                          min_m_compress_elements=min_m_compress_elements,
                          faithful=faithful, seed=seed, m_ref_bits=m_ref_bits,
                          implementation=implementation),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate)))
