"""Flash-decoding Pallas kernel of HoloKV's slot attention.

The "triton" (compiled on GPU) and "interpret" backends of
``holojax.kernels.holokv.slot_attention``; the contract is ``reference.py``.

Grid (B, G, P): program (b, g, p) loads the R query rows of kv head g once
([R, D], float32) and walks its share of the valid slots s < n in blocks of
``block_s`` slots, reading [block_s, D] tiles of the compressed K and V of
head g directly. Online softmax per row (running max m, sum l, unnormalised
output acc): for a block with scores x_{rs} (x = -inf at s >= n),

  m' = max(m, max_s x_{rs}),   c = exp(m - m'),
  l' = c l + sum_s exp(x_{rs} - m'),   acc' = c acc + sum_s exp(x_{rs} - m') V_s.

Work split. The n valid slots fill nb = ceil(n / block_s) blocks, shared
evenly by the P programs of a (b, g): program p walks blocks
[p c, min((p + 1) c, nb)) with c = ceil(nb / P), a ``fori_loop`` whose
bounds depend on n (a traced scalar input), so decode time follows the
filled length, not the capacity S, and every split keeps working as the
cache fills. Every block visited holds a valid slot, so m' is finite and no
NaN appears; a program with no block writes (acc, m, l) = (0, -inf, 0).
Loads are masked at s >= n (n <= S), which also keeps them inside the
array: nothing is padded or copied.

The epilogue (``combine``, XLA) merges the P partials by log-sum-exp:
M = max_p m_p, L = sum_p e^{m_p - M} l_p, o = sum_p e^{m_p - M} acc_p / L,
lse = M + log L.

Triton limits: tensor sizes are powers of two and ``dot`` needs >= 16 per
side, so R is zero-padded to a power of two >= 16 here (padded rows score
0 and are sliced off) and D must be a power of two >= 16. Scores and the
value sum are float32 ``dot``s (K and V are upcast after loading) at
``Precision.HIGHEST``, which Pallas lowers to IEEE float32 (its default
precision would lower to TF32, ~1e-3 relative error).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from holojax.kernels import backend
from holojax.kernels.holokv.config import SlotTiles
from holojax.kernels.holokv.reference import HIGHEST, safe_reciprocal


def _kernel(n_ref, q_ref, k_ref, v_ref, acc_ref, m_ref, l_ref, *, block_s: int, splits: int):
  """One (b, g, p) program: (acc [R, D], m [R], l [R]) over its blocks."""
  from jax.experimental.pallas import triton as plgpu  # noqa: PLC0415 (masked loads)
  f32 = jnp.float32
  n = n_ref[()]
  p = pl.program_id(2)  # (outside loops: interpreter)
  nb = (n + block_s - 1) // block_s  # blocks that hold a valid slot
  per = (nb + splits - 1) // splits
  lo = p * per
  hi = jnp.minimum(lo + per, nb)
  q_rd = q_ref[...].astype(f32)
  r = q_rd.shape[0]
  offs_s = jnp.arange(block_s, dtype=jnp.int32)

  def body(i, carry):
    acc_rd, m_r, l_r = carry
    start = pl.multiple_of(i * block_s, block_s)
    valid_s = start + offs_s < n
    rows = pl.ds(start, block_s)
    k_sd = plgpu.load(k_ref.at[rows, :], mask=valid_s[:, None], other=0).astype(f32)
    x_rs = jax.lax.dot_general(q_rd, k_sd, (((1,), (1,)), ((), ())), precision=HIGHEST,
                               preferred_element_type=f32)
    x_rs = jnp.where(valid_s[None, :], x_rs, -jnp.inf)
    m_new = jnp.maximum(m_r, jnp.max(x_rs, axis=1))
    c_r = jnp.exp(m_r - m_new)
    p_rs = jnp.exp(x_rs - m_new[:, None])
    v_sd = plgpu.load(v_ref.at[rows, :], mask=valid_s[:, None], other=0).astype(f32)
    pv_rd = jax.lax.dot_general(p_rs, v_sd, (((1,), (0,)), ((), ())), precision=HIGHEST,
                                preferred_element_type=f32)
    return (c_r[:, None] * acc_rd + pv_rd, m_new, c_r * l_r + jnp.sum(p_rs, axis=1))

  init = (jnp.zeros(q_rd.shape, f32), jnp.full((r,), -jnp.inf, f32), jnp.zeros((r,), f32))
  acc_rd, m_r, l_r = jax.lax.fori_loop(lo, hi, body, init)
  acc_ref[...] = acc_rd
  m_ref[...] = m_r
  l_ref[...] = l_r


def combine(acc_bgprd: jax.Array, m_bgpr: jax.Array, l_bgpr: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
  """Merge per-split partials (axis 2) into (o [B, G, R, D], lse [B, G, R]).

  M = max_p m_p, L = sum_p e^{m_p - M} l_p, o = sum_p e^{m_p - M} acc_p / L,
  lse = M + log L; all splits empty (m = -inf, l = 0): o = 0, lse = -inf.

  Example:
    >>> acc = jnp.array([1.0, 3.0]).reshape(1, 1, 2, 1, 1)
    >>> m = jnp.array([0.0, -jnp.inf]).reshape(1, 1, 2, 1)   # split 1 is empty
    >>> l = jnp.array([2.0, 0.0]).reshape(1, 1, 2, 1)
    >>> o, lse = combine(acc, m, l)
    >>> float(o[0, 0, 0, 0]), round(float(lse[0, 0, 0]), 4)
    (0.5, 0.6931)
  """
  m_bgr = jnp.max(m_bgpr, axis=2)
  m_bgr = jnp.where(jnp.isfinite(m_bgr), m_bgr, 0.0)
  w_bgpr = jnp.exp(m_bgpr - m_bgr[:, :, None])
  l_bgr = jnp.sum(w_bgpr * l_bgpr, axis=2)
  acc_bgrd = jnp.sum(w_bgpr[..., None] * acc_bgprd, axis=2)
  return acc_bgrd * safe_reciprocal(l_bgr)[..., None], m_bgr + jnp.log(l_bgr)


def padded_rows(r: int) -> int:
  """R rounded up to a power of two >= 16 (Triton's smallest ``dot``).

  Example:
    >>> [padded_rows(r) for r in (1, 12, 16, 17)]
    [16, 16, 16, 32]
  """
  return max(16, 1 << max(r - 1, 0).bit_length())


def check_layout(qr_bgrd, ks_bsgd, vs_bsgd, n_valid, **kw) -> None:
  """Raises :class:`backend.Unsupported` unless D is a power of two >= 16."""
  del ks_bsgd, vs_bsgd, n_valid, kw
  d = qr_bgrd.shape[-1]
  if d < 16 or d & (d - 1):
    raise backend.Unsupported(f"the Pallas kernel needs the head dim D to be a power of two "
                              f">= 16, got D={d}")


def slot_attention_pallas(qr_bgrd: jax.Array, ks_bsgd: jax.Array, vs_bsgd: jax.Array,
                          n_valid: jax.Array | int, *, tiles: SlotTiles | None = None,
                          interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """Slot attention by the flash-decoding kernel (module docstring).

  The contract of :func:`reference.slot_attention_reference`; no gradient.
  The public op ``holojax.kernels.holokv.slot_attention`` validates the
  arguments and picks this backend ("triton", or "interpret" for
  ``interpret=True``).

  Args:
    qr_bgrd: query rows [B, G, R, D] (any float dtype; D a power of two >= 16).
    ks_bsgd, vs_bsgd: slots [B, S, G, D] (bfloat16 or float32).
    n_valid: int scalar, may be traced; clipped to [0, S].
    tiles: tile sizes (``SlotTiles()`` by default), resolved for B, G, S.
    interpret: run in the Pallas interpreter (any backend, slow).

  Returns:
    (o float32[B, G, R, D], lse float32[B, G, R]).

  Raises:
    backend.Unsupported: D is not a power of two >= 16, or not interpreting
      and the default backend is not a GPU.

  Example:
    >>> q = jnp.ones((1, 1, 3, 16)); ks = jnp.zeros((1, 40, 1, 16))
    >>> vs = jnp.broadcast_to(jnp.arange(40.0)[None, :, None, None], ks.shape)
    >>> o, lse = slot_attention_pallas(q, ks, vs, 20, interpret=True)
    >>> float(o[0, 0, 2, 0]), round(float(lse[0, 0, 2]), 4)   # mean of 0..19, log 20
    (9.5, 2.9957)
  """
  if not interpret:
    backend.require_triton()
  check_layout(qr_bgrd, ks_bsgd, vs_bsgd, n_valid)
  b, g, r, d = qr_bgrd.shape
  s = ks_bsgd.shape[1]
  tiles = (tiles or SlotTiles()).resolve(batch=b, kv_heads=g, slots=s)
  rp, nsp = padded_rows(r), tiles.splits
  q_bgrd = jnp.pad(qr_bgrd, ((0, 0), (0, 0), (0, rp - r), (0, 0)))
  n = jnp.clip(jnp.asarray(n_valid, jnp.int32), 0, s)
  sq = pl.squeezed
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu  # noqa: PLC0415
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=tiles.num_warps,
                                                     num_stages=tiles.num_stages)
  f32 = jnp.float32
  acc, m, l = pl.pallas_call(
      functools.partial(_kernel, block_s=tiles.block_s, splits=nsp),
      out_shape=(jax.ShapeDtypeStruct((b, g, nsp, rp, d), f32),
                 jax.ShapeDtypeStruct((b, g, nsp, rp), f32),
                 jax.ShapeDtypeStruct((b, g, nsp, rp), f32)),
      grid=(b, g, nsp),
      in_specs=[pl.BlockSpec((), lambda i, j, p: ()),
                pl.BlockSpec((sq, sq, rp, d), lambda i, j, p: (i, j, 0, 0)),
                pl.BlockSpec((sq, s, sq, d), lambda i, j, p: (i, 0, j, 0)),
                pl.BlockSpec((sq, s, sq, d), lambda i, j, p: (i, 0, j, 0))],
      out_specs=(pl.BlockSpec((sq, sq, sq, rp, d), lambda i, j, p: (i, j, p, 0, 0)),
                 pl.BlockSpec((sq, sq, sq, rp), lambda i, j, p: (i, j, p, 0)),
                 pl.BlockSpec((sq, sq, sq, rp), lambda i, j, p: (i, j, p, 0))),
      interpret=interpret,
      name="holokv_slot_attention",
      **kwargs,
  )(n, q_bgrd, ks_bsgd, vs_bsgd)
  o_bgrd, lse_bgr = combine(acc, m, l)
  return o_bgrd[:, :, :r], lse_bgr[:, :, :r]
