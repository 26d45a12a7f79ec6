"""TurboAdam: Adam with a log-scale n-bit v and a sign-coded "CoState" m.

Second moment (per 128-element block, really packed, see
:mod:`holojax.kernels.quant`)::

  v_{t-1} = decode(codes, lo, hi)                      # log grid, code 0 == 0
  v_t     = b2 v_{t-1} + (1 - b2) g_t^2                # EMA in the decoded domain
  codes   = stochastic_round(v_t)                      # E[decode(codes)] == v_t

First moment ("CoState"), with ``m_t = b1 m^_{t-1} + (1 - b1) g_t`` computed
in float32 from the decoded previous state::

  m_t     = alpha r + delta,     alpha = (m_t . r) / (r . r)
  delta^  = s_b sign(delta)      per block b, r_b = mean|delta_b|:
            null  (r_b <  P_null):            s_b = 0
            phase (P_null <= r_b < P_amp):    s_b = mean of r over phase blocks
            amp   (r_b >= P_amp):             s_b = r_b
  m^_t    = alpha r + delta^

* ``faithful=True`` is the original: ``r = g_t`` at encode time, and because
  ``g_t`` is not stored, the next step decodes with the *new* gradient,
  ``m^_t = alpha_t g_{t+1} + delta^_t``. The decoded m is then not an EMA of
  gradients (``alpha -> 1``, so ``m ~ g_{t+1} + delta^``).
* default (``faithful=False``): the reference direction is *stored*: ``r`` is
  a ``m_ref_bits``-bit code of ``m_t`` itself (sign bit, plus for 2 bits a
  magnitude bit choosing between two fp16 levels per block, the means of
  ``|m|`` below/above the block mean). Decoding needs only the stored state,
  so ``m^_t`` approximates ``m_t`` and the recursion stays an EMA of the
  gradients; CoState codes the residual ``delta = m_t - alpha r``.
* ``error_feedback=True`` adds the last coding error of ``delta`` before
  coding (a float32 buffer: +32 bits/param).

The step is Adam's: ``u = (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)``
(``v_t``/``m_t`` before re-encoding). Tensors with fewer than
``min_m_compress_elements`` keep m dense float32; v of a tensor stays dense
float32 when its packed form would not be smaller (tiny biases). Non-finite
gradients give a zero update and leave the state unchanged except
``skipped``.

State layout (default, 4-bit v, 2-bit reference, block 128), bits/param::

  v:  4 (codes) + 2*16/128 (lo, hi)                               = 4.25
  m:  2 (ref codes) + 2*16/128 (ref levels) + 1 (delta signs)
      + 16/128 (delta scale)                                      = 3.375
  per tensor: alpha float32; per state: count, skipped int32, key uint32[2]

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

from holojax.kernels import quant
from holojax.kernels import turbo_adam as kernels


# Arguments that must be static under ``optax.inject_hyperparams`` (the bools
# are static there anyway; listed for clarity).
STATIC_ARGS = ("block_size", "v_bits", "compress_m", "compress_v", "error_feedback",
               "min_m_compress_elements", "faithful", "m_ref_bits", "seed",
               "implementation")


class PackedV(NamedTuple):
  """Log-scale v of one tensor."""
  codes: jax.Array   # uint8[nb, block_size * v_bits / 8], planar packed
  log_lo: jax.Array  # float16[nb], floor of log2(min positive v) per block
  log_hi: jax.Array  # float16[nb], ceil of log2(max v) per block


class CoStateM(NamedTuple):
  """CoState m of one tensor; ``None`` fields are absent in that mode."""
  alpha: jax.Array             # float32[], projection coefficient
  ref_codes: jax.Array | None  # uint8[nb, block_size * m_ref_bits / 8] (default mode)
  ref_levels: jax.Array | None  # float16[nb, m_ref_bits] (default mode)
  sign_codes: jax.Array        # uint8[nb, block_size / 8], 1 = negative delta
  scales: jax.Array            # float16[nb], 0 null / shared phase / own amplitude
  err: jax.Array | None        # float32[nb, block_size] (error_feedback only)


class ScaleByTurboAdamState(NamedTuple):
  """State of :func:`scale_by_turbo_adam`."""
  count: jax.Array    # int32[], finite steps taken
  key: jax.Array      # uint32[2] (raw key data), split every finite step
  skipped: jax.Array  # int32[], steps skipped for non-finite gradients
  mu: Any             # per leaf: float32[param shape] or CoStateM
  nu: Any             # per leaf: float32[param shape] or PackedV


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
    for f in dataclasses.fields(self):
      if isinstance(getattr(self, f.name), jax.Array):
        raise TypeError(f"{f.name} sets array shapes and must be a Python value; under "
                        "optax.inject_hyperparams pass static_args=STATIC_ARGS")
    bs = self.block_size
    if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs <= 0 or bs % 8:
      raise ValueError(f"block_size={bs!r} must be a positive multiple of 8 "
                       "(whole bytes of packed codes per block)")
    if self.v_bits not in quant.LOG_WIDTHS or isinstance(self.v_bits, bool):
      raise ValueError(f"v_bits={self.v_bits!r} not supported; choose one of {quant.LOG_WIDTHS}")
    if self.m_ref_bits not in (1, 2) or isinstance(self.m_ref_bits, bool):
      raise ValueError(f"m_ref_bits={self.m_ref_bits!r}; choose one of (1, 2)")
    mce = self.min_m_compress_elements
    if isinstance(mce, bool) or not isinstance(mce, (int, np.integer)) or mce < 0:
      raise ValueError(f"min_m_compress_elements={mce!r} must be an integer >= 0")
    for name in ("compress_m", "compress_v", "error_feedback", "faithful"):
      if not isinstance(getattr(self, name), (bool, np.bool_)):
        raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")

  def m_compressed(self, n: int) -> bool:
    return self.compress_m and n > 0 and n >= self.min_m_compress_elements

  def v_compressed(self, n: int) -> bool:
    nb = quant.num_blocks(n, self.block_size)
    packed = nb * (self.block_size * self.v_bits // 8 + 4)
    return self.compress_v and n > 0 and packed < 4 * n


def _check_real(name: str, value, lo: float, hi: float, lo_open=False, hi_open=False):
  """Validates Python numbers only (traced hyperparameters pass unchecked)."""
  if isinstance(value, jax.Array) or not isinstance(value, (int, float, np.number)):
    return
  bad = (value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi)
         or not math.isfinite(value))
  if bad:
    rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    raise ValueError(f"{name}={value!r} must be in {rng}")


def _is_concrete_number(x) -> bool:
  return not isinstance(x, jax.Array) and isinstance(x, (int, float, np.number))


# ----------------------------------------------------------------------------
# v.


def _init_v(p: jax.Array, layout: TurboAdamLayout):
  n = p.size
  if not layout.v_compressed(n):
    return jnp.zeros(p.shape, jnp.float32)
  nb = quant.num_blocks(n, layout.block_size)
  return PackedV(jnp.zeros((nb, layout.block_size * layout.v_bits // 8), jnp.uint8),
                 jnp.zeros((nb,), jnp.float16), jnp.zeros((nb,), jnp.float16))


# ----------------------------------------------------------------------------
# CoState m.


def _init_m(p: jax.Array, layout: TurboAdamLayout):
  n = p.size
  if not layout.m_compressed(n):
    return jnp.zeros(p.shape, jnp.float32)
  bs = layout.block_size
  nb = quant.num_blocks(n, bs)
  ref = not layout.faithful
  return CoStateM(
      alpha=jnp.zeros((), jnp.float32),
      ref_codes=jnp.zeros((nb, bs * layout.m_ref_bits // 8), jnp.uint8) if ref else None,
      ref_levels=jnp.zeros((nb, layout.m_ref_bits), jnp.float16) if ref else None,
      sign_codes=jnp.zeros((nb, bs // 8), jnp.uint8),
      scales=jnp.zeros((nb,), jnp.float16),
      err=jnp.zeros((nb, bs), jnp.float32) if layout.error_feedback else None)


def decode_reference(codes: jax.Array, levels: jax.Array, bits: int) -> jax.Array:
  """Stored reference ``r [nb, bs]`` from sign (+ magnitude) codes and fp16 levels."""
  bs = codes.shape[-1] * 8 // bits
  c = quant.unpack_bits(codes, bits, bs)
  sign = 1.0 - 2.0 * (c & 1).astype(jnp.float32)
  lv = levels.astype(jnp.float32)
  if bits == 1:
    mag = lv[:, :1]
  else:
    mag = jnp.where((c >> 1) == 1, lv[:, 1:2], lv[:, 0:1])
  return sign * mag


def encode_reference(m: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
  """``m [nb, bs]`` -> ``(codes uint8, levels float16[nb, bits])``.

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
  """CoState sign code of ``delta [nb, bs]``: ``(sign_codes, scales float16[nb])``.

  Block magnitude ``r_b = mean|delta_b|``; blocks below the ``null_pct``
  quantile of ``r`` decode to 0, blocks at or above the ``amp_pct`` quantile
  keep their own scale ``r_b``, the rest share the mean ``r`` of their class.
  """
  r = jnp.mean(jnp.abs(delta), axis=-1)
  t_null = jnp.quantile(r, null_pct)
  t_amp = jnp.quantile(r, amp_pct)
  null = r < t_null
  amp = (r >= t_amp) & ~null
  phase = ~null & ~amp
  s_phase = jnp.sum(jnp.where(phase, r, 0.0)) / jnp.maximum(jnp.sum(phase), 1)
  scales = jnp.where(null, 0.0, jnp.where(amp, r, s_phase)).astype(jnp.float16)
  return quant.pack_signs(delta), scales


def costate_decode_delta(sign_codes: jax.Array, scales: jax.Array) -> jax.Array:
  bs = sign_codes.shape[-1] * 8
  return quant.unpack_signs(sign_codes, bs) * scales.astype(jnp.float32)[:, None]


def decode_m(ms: CoStateM, g_blocks: jax.Array, layout: TurboAdamLayout) -> jax.Array:
  """Previous m ``[nb, bs]`` from the stored state (``g`` only when faithful)."""
  delta = costate_decode_delta(ms.sign_codes, ms.scales)
  if layout.faithful:
    return ms.alpha * g_blocks + delta
  return ms.alpha * decode_reference(ms.ref_codes, ms.ref_levels, layout.m_ref_bits) + delta


def encode_m(m: jax.Array, g_blocks: jax.Array, ms: CoStateM, layout: TurboAdamLayout,
             null_pct, amp_pct) -> CoStateM:
  """CoState code of ``m [nb, bs]`` (see module docstring)."""
  if layout.faithful:
    ref_codes = ref_levels = None
    r = g_blocks
  else:
    ref_codes, ref_levels = encode_reference(m, layout.m_ref_bits)
    r = decode_reference(ref_codes, ref_levels, layout.m_ref_bits)
  rr = jnp.sum(r * r)
  alpha = jnp.where(rr > 0, jnp.sum(m * r) / jnp.where(rr > 0, rr, 1.0), 0.0)
  delta = m - alpha * r
  if layout.error_feedback:
    delta = delta + ms.err
  sign_codes, scales = costate_code(delta, null_pct, amp_pct)
  err = delta - costate_decode_delta(sign_codes, scales) if layout.error_feedback else None
  return CoStateM(alpha.astype(jnp.float32), ref_codes, ref_levels, sign_codes, scales, err)


# ----------------------------------------------------------------------------
# The transformation.


def _leaf_update(g, ms, vs, seed, *, layout, impl, b1, b2, eps, bc1, bc2, null_pct, amp_pct):
  """One tensor: ``(update, new m state, new v state)``."""
  shape, bs = g.shape, layout.block_size
  g32 = g.astype(jnp.float32)
  g_blocks = quant.to_blocks(g32, bs) if isinstance(ms, CoStateM) or isinstance(vs, PackedV) \
      else None

  if isinstance(ms, CoStateM):
    m_blocks = b1 * decode_m(ms, g_blocks, layout) + (1.0 - b1) * g_blocks
    new_ms = encode_m(m_blocks, g_blocks, ms, layout, null_pct, amp_pct)
    m_dense = None
  else:
    m_dense = b1 * ms + (1.0 - b1) * g32
    new_ms, m_blocks = m_dense, None

  if isinstance(vs, PackedV):
    if m_blocks is None:
      m_blocks = quant.to_blocks(m_dense, bs)
    scalars = jnp.stack([jnp.asarray(x, jnp.float32) for x in (b2, eps, bc1, bc2)])
    upd, codes, lo, hi = kernels.fused_v_update(
        g_blocks, m_blocks, vs.codes, vs.log_lo, vs.log_hi, scalars, seed,
        bits=layout.v_bits, implementation=impl)
    return quant.from_blocks(upd, shape), new_ms, PackedV(codes, lo, hi)

  v = b2 * vs + (1.0 - b2) * jnp.square(g32)
  m = m_dense if m_blocks is None else quant.from_blocks(m_blocks, shape)
  upd = (m / bc1) / (jnp.sqrt(v / bc2) + eps)
  return upd, new_ms, v


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
    block_size: elements per quantisation block (positive multiple of 8).
    v_bits: bits per v code, one of 2, 3, 4, 6, 8.
    compress_m / compress_v: compress the first / second moment.
    null_pct, amp_pct: CoState block-magnitude quantiles, ``0 <= null < amp <= 1``.
    error_feedback: carry the CoState coding error (float32 buffer).
    min_m_compress_elements: smaller tensors keep m dense float32.
    faithful: the original CoState decode (with the current gradient).
    seed: seed of the stochastic-rounding key.
    m_ref_bits: bits of the stored reference code of m (1 or 2; default mode).
    implementation: backend of the fused v step: None (the default,
      ``"xla"``), ``"xla"``, ``"triton"``, ``"interpret"``, ``"pallas"``
      (the compiled Pallas GPU backends) or a sequence tried in order; see
      :func:`holojax.kernels.turbo_adam.fused_v_update`. Chosen once, here.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Shape-setting arguments
    (``block_size, v_bits, compress_m, compress_v, error_feedback,
    min_m_compress_elements, faithful, m_ref_bits, implementation, seed``,
    :data:`STATIC_ARGS`) must be ``static_args`` under
    ``optax.inject_hyperparams``::

      optax.inject_hyperparams(turbo_adam, static_args=STATIC_ARGS)(learning_rate=1e-3)

  Raises:
    ValueError: an argument is out of range (the message names it), or a
      forced ``implementation`` cannot run here.
    TypeError: at ``init``, a parameter has an integer dtype.
  """
  layout = TurboAdamLayout(block_size, v_bits, compress_m, compress_v, error_feedback,
                           min_m_compress_elements, faithful, m_ref_bits)
  _check_real("b1", b1, 0.0, 1.0, hi_open=True)
  _check_real("b2", b2, 0.0, 1.0, hi_open=True)
  _check_real("eps", eps, 0.0, math.inf, hi_open=True)
  _check_real("null_pct", null_pct, 0.0, 1.0, hi_open=True)
  _check_real("amp_pct", amp_pct, 0.0, 1.0, lo_open=True)
  if _is_concrete_number(null_pct) and _is_concrete_number(amp_pct) and null_pct >= amp_pct:
    raise ValueError(f"null_pct={null_pct!r} must be < amp_pct={amp_pct!r} "
                     "(need 0 <= null_pct < amp_pct <= 1)")
  impl = kernels.select_implementation(bits=v_bits, block_size=block_size,
                                       implementation=implementation)
  if impl != "xla" and not compress_v:
    raise ValueError(f"implementation={implementation!r} picks the kernel {impl!r}, which "
                     "needs compress_v=True (it updates the packed v)")

  def init_fn(params):
    for leaf in jax.tree.leaves(params):
      if not jnp.issubdtype(leaf.dtype, jnp.floating):
        raise TypeError(f"turbo_adam needs floating-point params, got dtype {leaf.dtype}")
    key = jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)
    return ScaleByTurboAdamState(
        count=jnp.zeros((), jnp.int32), key=key, skipped=jnp.zeros((), jnp.int32),
        mu=jax.tree.map(lambda p: _init_m(p, layout), params),
        nu=jax.tree.map(lambda p: _init_v(p, layout), params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    leaves, treedef = jax.tree.flatten(updates)
    mus = treedef.flatten_up_to(state.mu)
    nus = treedef.flatten_up_to(state.nu)
    count = optax.safe_increment(state.count)
    bc1 = 1.0 - jnp.asarray(b1, jnp.float32) ** count
    bc2 = 1.0 - jnp.asarray(b2, jnp.float32) ** count
    key, sub = jax.random.split(jax.random.wrap_key_data(state.key))
    finite = jnp.asarray(True)
    for g in leaves:
      finite = finite & jnp.all(jnp.isfinite(g))

    new_u, new_m, new_v = [], [], []
    for i, (g, ms, vs) in enumerate(zip(leaves, mus, nus)):
      seed_i = quant.seed_from_key(jax.random.fold_in(sub, i))
      u, m, v = _leaf_update(g, ms, vs, seed_i, layout=layout, impl=impl, b1=b1, b2=b2,
                             eps=eps, bc1=bc1, bc2=bc2, null_pct=null_pct, amp_pct=amp_pct)
      new_u.append(jnp.where(finite, u, 0.0).astype(g.dtype))
      new_m.append(m)
      new_v.append(v)

    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = ScaleByTurboAdamState(
        count=jnp.where(finite, count, state.count),
        key=jnp.where(finite, jax.random.key_data(key).astype(jnp.uint32), state.key),
        skipped=state.skipped + (~finite).astype(jnp.int32),
        mu=keep(treedef.unflatten(new_m), state.mu),
        nu=keep(treedef.unflatten(new_v), state.nu))
    return treedef.unflatten(new_u), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def turbo_adam(learning_rate: optax.ScalarOrSchedule = 1e-3, b1: float = 0.9,
               b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
               block_size: int = 128, v_bits: int = 4, compress_m: bool = True,
               compress_v: bool = True, null_pct: float = 0.10, amp_pct: float = 0.90,
               error_feedback: bool = False, min_m_compress_elements: int = 4096,
               faithful: bool = False, seed: int = 0, m_ref_bits: int = 2,
               implementation: str | None = None, mask: Any = None
               ) -> optax.GradientTransformationExtraArgs:
  """TurboAdam(W): ``chain(scale_by_turbo_adam, add_decayed_weights, -lr)``.

  With ``compress_m=False, compress_v=False`` this is ``optax.adamw``. See
  :func:`scale_by_turbo_adam` for the arguments and the module docstring for
  the maths and the state layout; ``mask`` is ``optax.add_decayed_weights``'.

  Example::

    >>> import jax.numpy as jnp, optax
    >>> opt = optax.chain(optax.clip_by_global_norm(1.0), turbo_adam(1e-3, weight_decay=0.01))
    >>> state = opt.init({"w": jnp.zeros((256, 256))})
  """
  _check_real("weight_decay", weight_decay, 0.0, math.inf, hi_open=True)
  return optax.chain(
      scale_by_turbo_adam(b1=b1, b2=b2, eps=eps, block_size=block_size, v_bits=v_bits,
                          compress_m=compress_m, compress_v=compress_v, null_pct=null_pct,
                          amp_pct=amp_pct, error_feedback=error_feedback,
                          min_m_compress_elements=min_m_compress_elements,
                          faithful=faithful, seed=seed, m_ref_bits=m_ref_bits,
                          implementation=implementation),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate))
