"""Chunk-parallel Pallas kernels of the causal phasor memory, fwd and bwd.

The "triton" (compiled on GPU) and "interpret" backends of
``holojax.kernels.phasor.phasor_memory``; the contract is ``reference.py``.

Forward (per batch b, head h, dim d; c_t the read scale; f an optional
positional frequency per (h, d), added to both phases as t f):

  k'_t = k_t + t f,   q'_t = q_t + t f,
  S_t  = sum_{s<=t} v_s e^{i k'_s},   y_t = c_t Re(S_t e^{-i q'_t}).

Real arithmetic only (Triton has no complex dtype): S = (cumsum v cos k',
cumsum v sin k') and y = c (S_re cos q' + S_im sin q').

Backward, for a cotangent g_t = dL/dy_t. A write s is read by every t >= s,
so its gradient is a *reverse* cumulative sum of the reads that see it:

  dL/dq_t = g_t c_t Im(S_t e^{-i q'_t})                       (needs S_t)
  R_s     = sum_{t>=s} g_t c_t e^{i q'_t}                     (reverse cumsum)
  dL/dv_s = Re(R_s e^{-i k'_s}),   dL/dk_s = v_s Im(R_s e^{-i k'_s})
  dL/df   = sum_{b,t} t (dL/dk_t + dL/dq_t).

Work split (why it is fast). The memory moves few bytes per element and
does little arithmetic, so it should be bound by HBM bandwidth. A kernel
that walks all of T in one program per (b, h, dim block) launches too few
programs to fill an H100 (B H D / block_d = 128 for 132 SMs): that design
measured 3-4x slower than XLA's associative_scan. Here T is cut into
segments of ``chunks * block_t`` rows and every segment is a program:

  1. ``_totals``: per segment, the sum of its writes ([B, T/seg, H, D]);
  2. XLA: exclusive cumulative sum of the segment totals (forward, or
     reverse for R) -- 1/seg of the data;
  3. ``_fwd`` / ``_bwd``: each program walks its segment chunk by chunk,
     carrying the running sum: in-chunk prefix sum (``cumsum`` over rows)
     plus carry, then the read.

The forward of training also saves the running sum entering each chunk
([B, T/block_t, H, D], 1/block_t of the data); the backward walks its
segment in reverse, rebuilding S_t from those and R_t from its own carry.
So training reads v, k, q twice and g, q once more, and writes y, dv, dk, dq
once: 30 bytes per element with bfloat16 storage against the 22-byte minimum
that any implementation moves. cos/sin use the GPU's special-function unit
(``_cos_sin``): with libdevice's, the kernels measured 2x slower.
Tile sizes were tuned on an H100 (``holojax bench phasor --tune``).

A reverse in-chunk sum is revcumsum(x) = sum(x) - cumsum(x) + x. T is
zero-padded to a multiple of block_t (a zero value writes nothing, a zero
cotangent reads nothing).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from holojax.kernels import backend
from holojax.kernels.phasor.chunked import chunked_memory
from holojax.kernels.phasor.config import PhasorBlocks
from holojax.kernels.phasor.reference import read_scale


# ----------------------------------------------------------------------------
# Kernel bodies. A program owns one segment of ``chunks`` chunks of
# ``block_t`` rows and ``bd`` dims: "rows" refs are [segment, bd] tiles,
# "seg" refs one [bd] carry, "chunk" refs [chunks, bd] (a carry per chunk),
# "freq" refs [bd].

_TWO_PI_HI = 6.2831855  # float32(2 pi)
_TWO_PI_LO = -1.7484555e-07  # 2 pi - float32(2 pi)


def _cos_sin(x, fast):
  """(cos x, sin x) in float32.

  fast: reduce x to [-pi, pi] (x - 2 pi n in two steps, error ~ ulp(x)),
  then the GPU's hardware ``cos.approx`` / ``sin.approx`` (absolute error
  <= 2^-20.5 on [-pi, pi]): two special-function instructions instead of
  two libdevice calls of ~30 instructions each. Not fast (interpreter):
  ``jnp.cos`` / ``jnp.sin``.
  """
  if not fast:
    return jnp.cos(x), jnp.sin(x)
  from jax.experimental.pallas import triton as plt  # noqa: PLC0415
  n = jnp.floor(x * (1.0 / _TWO_PI_HI) + 0.5)
  r = (x - n * _TWO_PI_HI) - n * _TWO_PI_LO
  out = [jax.ShapeDtypeStruct(r.shape, jnp.float32)]

  def asm(op):
    return plt.elementwise_inline_asm(
        f"{op}.approx.f32 $0, $1;", args=[r], constraints="=f,f", pack=1,
        result_shape_dtypes=out)[0]

  return asm("cos"), asm("sin")


def _chunk(blocks, t_seg, i):
  """Rows of chunk i of the segment starting at position t_seg, and their
  positions t float32[block_t, 1]."""
  rows = pl.ds(i * blocks.block_t, blocks.block_t)
  t0 = t_seg + i * blocks.block_t
  t_r1 = (t0 + jnp.arange(blocks.block_t)).astype(jnp.float32)[:, None]
  return rows, t_r1


def _phase(ref, rows, t_r1, f_1d, fast):
  return _cos_sin(ref[rows, :].astype(jnp.float32) + t_r1 * f_1d, fast)


def _totals_kernel(w_ref, a_ref, f_ref, re_ref, im_ref, *, blocks, scale,
                   fast):
  """Segment sum of w c e^{i(a + t f)} (c = 1 or the read scale)."""
  f_1d = f_ref[...][None, :]
  t_seg = pl.program_id(1) * blocks.segment  # (outside loops: interpreter)

  def body(i, acc):
    rows, t_r1 = _chunk(blocks, t_seg, i)
    w = w_ref[rows, :].astype(jnp.float32) * read_scale(t_r1, scale)
    ca, sa = _phase(a_ref, rows, t_r1, f_1d, fast)
    return acc[0] + jnp.sum(w * ca, axis=0), acc[1] + jnp.sum(w * sa, axis=0)

  zero = jnp.zeros(f_ref.shape, jnp.float32)
  re_ref[...], im_ref[...] = jax.lax.fori_loop(0, blocks.chunks, body,
                                               (zero, zero))


def _fwd_kernel(v_ref, k_ref, q_ref, f_ref, cre_ref, cim_ref, y_ref, *rest,
                blocks, scale, fast):
  """y over the segment; with ``rest`` also each chunk's carry-in S."""
  f_1d = f_ref[...][None, :]
  t_seg = pl.program_id(1) * blocks.segment  # (outside loops: interpreter)

  def body(i, carry):
    rows, t_r1 = _chunk(blocks, t_seg, i)
    if rest:  # save S entering chunk i for the backward
      rest[0][pl.ds(i, 1), :] = carry[0][None, :]
      rest[1][pl.ds(i, 1), :] = carry[1][None, :]
    v = v_ref[rows, :].astype(jnp.float32)
    ck, sk = _phase(k_ref, rows, t_r1, f_1d, fast)
    x_re, x_im = v * ck, v * sk
    s_re = jnp.cumsum(x_re, axis=0) + carry[0][None, :]
    s_im = jnp.cumsum(x_im, axis=0) + carry[1][None, :]
    cq, sq = _phase(q_ref, rows, t_r1, f_1d, fast)
    y = read_scale(t_r1, scale) * (s_re * cq + s_im * sq)
    y_ref[rows, :] = y.astype(y_ref.dtype)
    return (carry[0] + jnp.sum(x_re, axis=0),
            carry[1] + jnp.sum(x_im, axis=0))

  jax.lax.fori_loop(0, blocks.chunks, body, (cre_ref[...], cim_ref[...]))


def _bwd_kernel(v_ref, k_ref, q_ref, g_ref, f_ref, sre_ref, sim_ref, rre_ref,
                rim_ref, dv_ref, dk_ref, dq_ref, df_ref, *, blocks, scale,
                fast):
  """Walks the segment backwards: R from the carry-in of later segments,
  S from the forward's saved per-chunk carries."""
  f_1d = f_ref[...][None, :]
  t_seg = pl.program_id(1) * blocks.segment  # (outside loops: interpreter)

  def body(j, carry):
    r_in_re, r_in_im, df = carry
    i = blocks.chunks - 1 - j
    rows, t_r1 = _chunk(blocks, t_seg, i)
    v = v_ref[rows, :].astype(jnp.float32)
    ck, sk = _phase(k_ref, rows, t_r1, f_1d, fast)
    cq, sq = _phase(q_ref, rows, t_r1, f_1d, fast)
    # dq needs the forward state S_t, rebuilt from the chunk's carry-in.
    s_re = jnp.cumsum(v * ck, axis=0) + sre_ref[pl.ds(i, 1), :]
    s_im = jnp.cumsum(v * sk, axis=0) + sim_ref[pl.ds(i, 1), :]
    w = g_ref[rows, :].astype(jnp.float32) * read_scale(t_r1, scale)
    dq = w * (s_im * cq - s_re * sq)
    # R_s = sum_{t>=s} w_t e^{i q'_t}: reverse in-chunk sum plus carry-in.
    x_re, x_im = w * cq, w * sq
    tot_re, tot_im = jnp.sum(x_re, axis=0), jnp.sum(x_im, axis=0)
    r_re = (tot_re + r_in_re)[None, :] - jnp.cumsum(x_re, axis=0) + x_re
    r_im = (tot_im + r_in_im)[None, :] - jnp.cumsum(x_im, axis=0) + x_im
    dk = v * (r_im * ck - r_re * sk)
    dv_ref[rows, :] = (r_re * ck + r_im * sk).astype(dv_ref.dtype)
    dk_ref[rows, :] = dk.astype(dk_ref.dtype)
    dq_ref[rows, :] = dq.astype(dq_ref.dtype)
    return (r_in_re + tot_re, r_in_im + tot_im,
            df + jnp.sum(t_r1 * (dk + dq), axis=0))

  zero = jnp.zeros(f_ref.shape, jnp.float32)
  df_ref[...] = jax.lax.fori_loop(
      0, blocks.chunks, body, (rre_ref[...], rim_ref[...], zero))[2]


# ----------------------------------------------------------------------------
# Launching.


def _block_d(d: int, cap: int) -> int:
  bd = 1
  while bd * 2 <= cap and d % (bd * 2) == 0:
    bd *= 2
  return bd


def _launch(body, ins, kinds, out_dtypes, out_kinds, *, name, shape,
            blocks: PhasorBlocks, interpret: bool, **static):
  """pallas_call over grid (B, T / segment, H * D / bd).

  ``kinds`` / ``out_kinds`` say how each operand is tiled: "rows" ([B, T, H,
  D], a [segment, bd] tile), "seg" ([B, T / segment, H, D], a [bd] carry),
  "chunk" ([B, T / block_t, H, D], a [chunks, bd] tile) or "freq" ([H, D],
  a [bd] slice).
  """
  b, t, h, d = shape
  bd = _block_d(d, blocks.block_d)
  nd = d // bd
  ns = t // blocks.segment
  sq = pl.squeezed

  def index(i, c, j):
    return (i, c, j // nd, j % nd)

  specs = {
      "rows": pl.BlockSpec((sq, blocks.segment, sq, bd), index),
      "seg": pl.BlockSpec((sq, sq, sq, bd), index),
      "chunk": pl.BlockSpec((sq, blocks.chunks, sq, bd), index),
      "freq": pl.BlockSpec((sq, bd), lambda i, c, j: (j // nd, j % nd)),
  }
  shapes = {"rows": shape, "seg": (b, ns, h, d),
            "chunk": (b, t // blocks.block_t, h, d)}
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plt  # noqa: PLC0415
    kwargs["compiler_params"] = plt.CompilerParams(
        num_warps=blocks.num_warps, num_stages=blocks.num_stages)
  return pl.pallas_call(
      functools.partial(body, blocks=blocks,
                        fast=blocks.fast_trig and not interpret, **static),
      out_shape=tuple(jax.ShapeDtypeStruct(shapes[kd], dt)
                      for kd, dt in zip(out_kinds, out_dtypes)),
      grid=(b, ns, h * nd),
      in_specs=[specs[kd] for kd in kinds],
      out_specs=tuple(specs[kd] for kd in out_kinds),
      interpret=interpret,
      name=name,
      **kwargs,
  )(*ins)


def _totals(w, a, f, *, scale, tiles, interpret):
  f32 = jnp.float32
  return _launch(_totals_kernel, (w, a, f), ("rows", "rows", "freq"), (f32, f32),
                 ("seg", "seg"), name="phasor_totals", shape=w.shape, blocks=tiles,
                 interpret=interpret, scale=scale)


def _forward(v, k, q, f, c_re, c_im, *, save, scale, tiles, interpret):
  f32 = jnp.float32
  return _launch(_fwd_kernel, (v, k, q, f, c_re, c_im),
                 ("rows",) * 3 + ("freq", "seg", "seg"),
                 (v.dtype,) + (f32, f32) * save,
                 ("rows",) + ("chunk", "chunk") * save, name="phasor_fwd",
                 shape=v.shape, blocks=tiles, interpret=interpret, scale=scale)


def _backward(v, k, q, g, f, s_re, s_im, r_re, r_im, *, scale, tiles, interpret):
  return _launch(
      _bwd_kernel, (v, k, q, g, f, s_re, s_im, r_re, r_im),
      ("rows",) * 4 + ("freq", "chunk", "chunk", "seg", "seg"),
      (v.dtype, k.dtype, q.dtype, jnp.float32),
      ("rows", "rows", "rows", "seg"), name="phasor_bwd", shape=v.shape,
      blocks=tiles, interpret=interpret, scale=scale)


_memory = chunked_memory(_totals, _forward, _backward)


def phasor_memory_pallas(v_bthd: jax.Array, k_theta: jax.Array,
                         q_theta: jax.Array, *,
                         freq_hd: jax.Array | None = None,
                         scale: str = "sqrt_t",
                         blocks: PhasorBlocks | None = None,
                         interpret: bool = False) -> jax.Array:
  """Causal phasor memory y_t = c_t Re(sum_{s<=t} v_s e^{i(k'_s - q'_t)}).

  k' = k + t f, q' = q + t f with f = ``freq_hd`` (zero if None): the
  contract of :func:`reference.phasor_memory_reference`; differentiable in
  v, k, q and f via a custom VJP whose backward is derived in the module
  docstring. The public op ``holojax.kernels.phasor.phasor_memory``
  validates the arguments and picks this backend ("triton", or "interpret"
  for ``interpret=True``).

  Args:
    v_bthd: values [B, T, H, D] (bfloat16 or float32 storage).
    k_theta, q_theta: key / query phases [B, T, H, D] (any float dtype;
      bfloat16 is enough for content phases when positions come as f).
    freq_hd: optional positional frequencies float32[H, D] (rad/token).
    scale: "sqrt_t" or "none".
    blocks: tile sizes (``PhasorBlocks()`` by default).
    interpret: run in the Pallas interpreter (any backend, slow).

  Returns:
    y [B, T, H, D] in v's dtype.

  Raises:
    backend.Unsupported: not interpreting and the default backend is not a
      GPU.

  Example:
    >>> v = jnp.ones((1, 20, 1, 4)); th = jnp.zeros((1, 20, 1, 4))
    >>> y = phasor_memory_pallas(v, th, th, interpret=True)
    >>> float(y[0, 3, 0, 0])   # 4 / sqrt(4)
    2.0
  """
  if not interpret:
    backend.require_triton()
  _, t, h, d = v_bthd.shape
  blocks = blocks or PhasorBlocks()
  if blocks.chunks == 0:  # the whole sequence in one segment
    blocks = dataclasses.replace(blocks, chunks=-(-t // blocks.block_t))
  while blocks.chunks > 1 and blocks.segment // 2 >= t:  # short sequences
    blocks = dataclasses.replace(blocks, chunks=-(-blocks.chunks // 2))
  f_hd = (jnp.zeros((h, d), jnp.float32) if freq_hd is None
          else freq_hd.astype(jnp.float32))
  pad = (-t) % blocks.segment
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    v_bthd, k_theta, q_theta = (jnp.pad(a, widths)
                                for a in (v_bthd, k_theta, q_theta))
  y = _memory(v_bthd, k_theta, q_theta, f_hd, scale, blocks, interpret)
  return y[:, :t]
