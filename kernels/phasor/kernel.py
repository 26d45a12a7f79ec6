"""Chunked Pallas kernel for the causal phasor memory, forward and backward.

Forward (per batch b, head h, dim d; c_t the read scale):

  S_t = sum_{s<=t} v_s e^{i k_s},   y_t = c_t Re(S_t e^{-i q_t}).

Real arithmetic only (Triton has no complex dtype): with a = v cos k,
b = v sin k, S = (cumsum a, cumsum b) and y = c (S_re cos q + S_im sin q).

Backward. For a cotangent g_t = dL/dy_t, y_t depends on S_t, which depends on
every write s <= t, so the gradient of a write is a *reverse* cumulative sum
of the reads that see it:

  dL/dq_t = g_t c_t Im(S_t e^{-i q_t})                        (local)
  R_s     = sum_{t>=s} g_t c_t e^{i q_t}                      (reverse cumsum)
  dL/dv_s = Re(R_s e^{-i k_s})
  dL/dk_s = v_s Im(R_s e^{-i k_s}).

(From dL/dS_re,t = g_t c_t cos q_t, dL/dS_im,t = g_t c_t sin q_t, summed over
t >= s, then the chain rule through a = v cos k, b = v sin k.) So the
backward is the same memory run backwards in time with the roles swapped:
writes g c at phase q, reads at phase k. One kernel does both directions:

  out_re_t = rs_t Re(P_t e^{-i beta_t}),   out_im_t = rs_t m_t Im(P_t e^{-i beta_t}),
  P_t = sum_{s<=t} (or s>=t) ws_s w_s e^{i alpha_s},

with optional write scale ws = c, read scale rs = c and multiplier m.
The forward saves c Im(S e^{-iq}) so dq needs no second scan.

Work split: the grid runs over (batch, head, dim block) in parallel; each
program walks T in chunks of ``block_t`` rows, carrying the running sum
(block_d floats, real and imaginary) in registers. Inside a chunk the
prefix sum is ``cumsum`` over rows; a reverse chunk uses
revcumsum(x) = sum(x) - cumsum(x) + x. T is zero-padded to a multiple of
block_t (a zero value writes nothing).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


@dataclasses.dataclass(frozen=True)
class PhasorBlocks:
  """Tile sizes of the phasor kernel.

  block_t: rows of T per chunk (power of two, >= 16).
  block_d: head-dim columns per program (power of two); capped at the head
    dim's largest power-of-two divisor.
  num_warps, num_stages: Triton launch parameters.
  """

  block_t: int = 64
  block_d: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_t", "block_d"):
      val = getattr(self, name)
      if val < 1 or val & (val - 1):
        raise ValueError(f"{name}={val} must be a power of two")
    if self.block_t < 16:
      raise ValueError(f"block_t={self.block_t} must be at least 16")
    if self.num_warps < 1 or self.num_stages < 1:
      raise ValueError(f"num_warps={self.num_warps} and num_stages="
                       f"{self.num_stages} must be positive")


def _scale(t_r, kind):
  if kind == "sqrt_t":
    return jax.lax.rsqrt(t_r + 1.0)
  return jnp.ones_like(t_r)


def _scan_kernel(*refs, block_t, num_chunks, reverse, write_scale, read_scale,
                 with_im, with_mul):
  """One (b, h, dim block) program; refs are [T_pad, block_d] views."""
  w_ref, a_ref, b_ref = refs[:3]
  m_ref = refs[3] if with_mul else None
  out_refs = refs[3 + with_mul:]
  re_ref = out_refs[0]
  im_ref = out_refs[1] if with_im else None
  bd = w_ref.shape[-1]

  def body(i, carry):
    p_re, p_im = carry  # [bd] float32, running sum
    c = num_chunks - 1 - i if reverse else i
    rows = pl.ds(c * block_t, block_t)
    t_r = (c * block_t + jnp.arange(block_t)).astype(jnp.float32)
    w = w_ref[rows, :].astype(jnp.float32)
    w = w * _scale(t_r, write_scale)[:, None]
    alpha = a_ref[rows, :].astype(jnp.float32)
    x_re = w * jnp.cos(alpha)
    x_im = w * jnp.sin(alpha)
    tot_re = jnp.sum(x_re, axis=0)
    tot_im = jnp.sum(x_im, axis=0)
    cs_re = jnp.cumsum(x_re, axis=0)
    cs_im = jnp.cumsum(x_im, axis=0)
    if reverse:
      cs_re = tot_re[None, :] - cs_re + x_re
      cs_im = tot_im[None, :] - cs_im + x_im
    s_re = cs_re + p_re[None, :]
    s_im = cs_im + p_im[None, :]
    beta = b_ref[rows, :].astype(jnp.float32)
    cb, sb = jnp.cos(beta), jnp.sin(beta)
    rs = _scale(t_r, read_scale)[:, None]
    re_ref[rows, :] = (rs * (s_re * cb + s_im * sb)).astype(re_ref.dtype)
    if with_im:
      im = rs * (s_im * cb - s_re * sb)
      if with_mul:
        im = im * m_ref[rows, :].astype(jnp.float32)
      im_ref[rows, :] = im.astype(im_ref.dtype)
    return p_re + tot_re, p_im + tot_im

  zero = jnp.zeros((bd,), jnp.float32)
  jax.lax.fori_loop(0, num_chunks, body, (zero, zero))


def _block_d(d: int, cap: int) -> int:
  bd = 1
  while bd * 2 <= cap and d % (bd * 2) == 0:
    bd *= 2
  return bd


def _scan(w, alpha, beta, mul, *, out_dtypes, reverse, write_scale,
          read_scale, blocks: PhasorBlocks, interpret: bool):
  """Launch the scan kernel on [B, T_pad, H, D] operands."""
  b, t, h, d = w.shape
  bd = _block_d(d, blocks.block_d)
  num_chunks = t // blocks.block_t
  with_im = len(out_dtypes) == 2
  kernel = functools.partial(
      _scan_kernel, block_t=blocks.block_t, num_chunks=num_chunks,
      reverse=reverse, write_scale=write_scale, read_scale=read_scale,
      with_im=with_im, with_mul=mul is not None)
  sq = getattr(pl, "squeezed", None)  # None means squeezed on older jax
  spec = pl.BlockSpec((sq, t, sq, bd), lambda i, j, k: (i, 0, j, k))
  ins = (w, alpha, beta) + (() if mul is None else (mul,))
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plt  # noqa: PLC0415
    kwargs["compiler_params"] = plt.CompilerParams(
        num_warps=blocks.num_warps, num_stages=blocks.num_stages)
  name = "phasor_scan_bwd" if reverse else "phasor_scan_fwd"
  return pl.pallas_call(
      kernel,
      out_shape=tuple(jax.ShapeDtypeStruct(w.shape, dt) for dt in out_dtypes),
      grid=(b, h, d // bd),
      in_specs=[spec] * len(ins),
      out_specs=tuple(spec for _ in out_dtypes),
      interpret=interpret,
      name=name,
      **kwargs,
  )(*ins)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _memory(v, k, q, scale, blocks, interpret):
  (y,) = _scan(v, k, q, None, out_dtypes=(v.dtype,), reverse=False,
               write_scale="none", read_scale=scale, blocks=blocks,
               interpret=interpret)
  return y


def _memory_fwd(v, k, q, scale, blocks, interpret):
  y, qim = _scan(v, k, q, None, out_dtypes=(v.dtype, jnp.float32),
                 reverse=False, write_scale="none", read_scale=scale,
                 blocks=blocks, interpret=interpret)
  return y, (v, k, q, qim)


def _memory_bwd(scale, blocks, interpret, res, g):
  v, k, q, qim = res
  dq = (g.astype(jnp.float32) * qim).astype(q.dtype)
  dv, dk = _scan(g, q, k, v, out_dtypes=(v.dtype, k.dtype), reverse=True,
                 write_scale=scale, read_scale="none", blocks=blocks,
                 interpret=interpret)
  return dv, dk, dq


_memory.defvjp(_memory_fwd, _memory_bwd)


def phasor_memory_pallas(v_bthd: jax.Array, k_theta: jax.Array,
                         q_theta: jax.Array, *, scale: str = "sqrt_t",
                         blocks: PhasorBlocks | None = None,
                         interpret: bool = False) -> jax.Array:
  """Causal phasor memory y_t = c_t Re(sum_{s<=t} v_s e^{i(k_s - q_t)}).

  Same contract as ``holojax.nn.phasor.phasor_memory`` (its reference is the
  associative_scan path); differentiable via a custom VJP whose backward is
  the reverse-time scan derived in the module docstring.

  Args:
    v_bthd: values [B, T, H, D] (bfloat16 or float32 storage).
    k_theta, q_theta: key / query phases [B, T, H, D].
    scale: "sqrt_t" or "none".
    blocks: tile sizes (``PhasorBlocks()`` by default).
    interpret: run in the Pallas interpreter (any backend, slow).

  Returns:
    y [B, T, H, D] in v's dtype.

  Raises:
    RuntimeError: not interpreting and the default backend is not a GPU.

  Example:
    >>> v = jnp.ones((1, 20, 1, 4)); th = jnp.zeros((1, 20, 1, 4))
    >>> y = phasor_memory_pallas(v, th, th, interpret=True)
    >>> float(y[0, 3, 0, 0])   # 4 / sqrt(4)
    2.0
  """
  if scale not in ("sqrt_t", "none"):
    raise ValueError(f"scale={scale!r} must be 'sqrt_t' or 'none'")
  if v_bthd.ndim != 4 or k_theta.shape != v_bthd.shape or (
      q_theta.shape != v_bthd.shape):
    raise ValueError("v, k_theta, q_theta must share one [B, T, H, D] shape, "
                     f"got {v_bthd.shape}, {k_theta.shape}, {q_theta.shape}")
  if not interpret and jax.default_backend() != "gpu":
    raise RuntimeError(
        "implementation='pallas' needs a GPU (Pallas Triton backend); the "
        f"default backend is {jax.default_backend()!r}. Use "
        "implementation='xla' (or None for automatic), or interpret=True.")
  blocks = blocks or PhasorBlocks()
  t = v_bthd.shape[1]
  pad = (-t) % blocks.block_t
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    v_bthd, k_theta, q_theta = (jnp.pad(a, widths)
                                for a in (v_bthd, k_theta, q_theta))
  y = _memory(v_bthd, k_theta, q_theta, scale, blocks, interpret)
  return y[:, :t]
