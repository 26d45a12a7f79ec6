"""Hopper-native (Pallas Mosaic GPU) kernels of the causal phasor memory.

The "mosaic" backend of ``holojax.kernels.phasor.phasor_memory``, beside the
Triton one (:mod:`.pallas_triton`); same contract (:mod:`.reference`) and
the same maths (per batch b, head h, dim d; c_t the read scale; f an
optional positional frequency per (h, d)):

  k'_t = k_t + t f,   q'_t = q_t + t f,
  S_t  = sum_{s<=t} v_s e^{i k'_s},   y_t = c_t Re(S_t e^{-i q'_t}),

in real arithmetic, S = (sum v cos k', sum v sin k'), y = c (S_re cos q' +
S_im sin q'). Backward, for a cotangent g_t (derived in pallas_triton.py):

  w_t     = g_t c_t,
  dL/dq_t = w_t Im(S_t e^{-i q'_t}) = w_t (S_im cos q' - S_re sin q'),
  R_s     = sum_{t>=s} w_t e^{i q'_t},
  dL/dv_s = Re(R_s e^{-i k'_s}),   dL/dk_s = v_s Im(R_s e^{-i k'_s}),
  dL/df   = sum_{b,t} t (dL/dk_t + dL/dq_t).

Work split. Heads and dims are merged into C = H * D columns ([B, T, H, D]
-> [B, T, C], free); a program owns ``bd`` columns of one segment of
``chunks * block_t`` rows, so there are B * (T / segment) * (C / bd)
programs, each one warpgroup (128 threads). As in pallas_triton.py:

  1. ``_totals_kernel``: per segment, the sum of its writes;
  2. XLA: exclusive cumulative sum of the segment totals (forward, or
     reverse for R) -- 1/segment of the data;
  3. ``_fwd_kernel`` / ``_bwd_kernel``: each program walks its segment and
     carries the running sum. The forward also saves S at the end of every
     chunk ([B, T / block_t, C] float32, 1/block_t of the data).

Mosaic GPU specifics. Launch: ``plgpu.kernel`` with the grid (B, T /
segment, C / bd) of programs (``lax.axis_index`` names them), and inside
each program ``plgpu.emit_pipeline`` over its ``chunks`` steps: a TMA
pipeline (``max_concurrent_steps`` = ``num_stages`` slots in shared
memory), so the [block_t, bd] tiles of v, k, q (g) stream in, and y (dv,
dk, dq) stream out, while the warpgroup computes; the running sums cross
pipeline steps in shared-memory scratch. Not ``pl.pallas_call`` with
``plgpu.CompilerParams`` (a grid with a "sequential" axis, which jax 0.10
turned into the same pipeline): jax 0.11 dropped pallas_call's Mosaic GPU
lowering rule (``gpu_lowering`` asserts on the missing rule, measured with
0.11.2 on the H200) and lowers Mosaic GPU kernels only through
``plgpu.kernel`` (``mpmd_map``); this route works on 0.10 and 0.11 alike.
The interpreter (``interpret=True``, any backend) still runs the same
bodies under ``pl.pallas_call``, with the steps as a last grid axis.

Inside a step the prefix sum runs *row by row*. Mosaic GPU has no cumsum
lowering rule and no register-level slicing of strided arrays, so the
choices were (a) a triangular-matrix product on the tensor cores (wgmma: X
to shared memory in the swizzled layout and split into two bfloat16 halves
to keep float32 accuracy, 8 products per chunk) or (b) rows. (b) is what
is here: a row of a tile is a [bd] vector in the strided layout, one column
(bd = 128) or two (bd = 256) per thread, so each thread walks its own
columns down the tile and the prefix sum is one add per element and row,
with no cross-thread traffic at all. Everything else in a row (loads,
range reduction, cos/sin, products) is independent of the carry, and the
row loop is unrolled, so the compiler overlaps rows; the kernel is meant
to be bound by HBM bandwidth, and the tensor-core version would add work
(and shared-memory round trips) without removing any byte.

The backward walks each chunk in reverse (the grid's sequential axis is
read back to front), with R carried forward from later chunks and S
rebuilt from the saved end-of-chunk sum by subtraction, S_{t-1} = S_t -
v_t e^{i k'_t} (at most block_t subtractions from an exact restart, as
accurate as the forward's additions), so one pass gives dq, dv, dk and df.
Bytes: training reads v, k, q twice and g, q once more, and writes y, dv,
dk, dq once -- the same 30 bytes per element (bfloat16 storage) as the
Triton kernel, against a 22-byte minimum.

cos/sin: with ``fast_trig`` the phase is reduced to [-pi, pi] (x - 2 pi n,
n = round(x / 2 pi), in two steps) and the kernel is compiled with
``approx_math``, which lowers ``jnp.cos`` / ``jnp.sin`` to the hardware
``cos.approx`` / ``sin.approx`` (absolute error <= 2^-20.5 on [-pi, pi]).

The fwd and bwd kernels are compiled with ``unsafe_no_auto_barriers``: by
default Pallas puts a warpgroup barrier before and after every store to
shared memory, i.e. several per row here, which would serialise the rows.
That is safe because every shared-memory word a thread touches outside the
pipeline's own copies is touched by that thread only (a [bd] row has one
strided layout for loads and stores), and the pipeline synchronises the
warpgroup around its TMA copies itself (``emit_pipeline``: a barrier
after each step's body, before the slot is refilled, and one before an
output slot is reused). The totals kernel writes no per-step outputs (its
pipeline has no such barrier), so it keeps the automatic ones.

Layout constraints: bd is 128 or 256 columns (whole strided rows; TMA boxes
of at most 256); C is zero-padded to a multiple of bd and T to a multiple
of the segment when needed (a zero value writes nothing, a zero cotangent
reads nothing).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from holojax.kernels import backend
from holojax.kernels.phasor.chunked import chunked_memory
from holojax.kernels.phasor.config import PhasorBlocks
from holojax.kernels.phasor.pallas_triton import _TWO_PI_HI, _TWO_PI_LO
from holojax.kernels.phasor.reference import read_scale

# Tiles used when ``blocks`` is None (shared memory per program: bwd with
# bfloat16 storage ~ 2 slots * 16 * 128 * 14 bytes = 57 KiB, 3 per SM).
DEFAULT_BLOCKS = PhasorBlocks(block_t=16, chunks=32, block_d=128,
                              num_stages=2)
_LANES = 128  # threads of a warpgroup: the columns of one strided row
_F32 = jnp.float32
_SMEM_BUDGET = 200 * 1024  # of the 227 KiB a Hopper block may use


@dataclasses.dataclass(frozen=True)
class _Tiles:
  """Resolved launch shape: rows per step, steps per segment, columns per
  program, pipeline slots, trig mode."""

  block_t: int
  chunks: int
  bd: int
  stages: int
  fast: bool
  unroll: int = 1  # rows per unrolled group of the row loop

  @property
  def segment(self) -> int:
    return self.block_t * self.chunks


def _tiles(blocks: PhasorBlocks, t: int, c: int) -> _Tiles:
  """block_d rounded to 128 or 256 (a multiple of the 128 lanes, at most a
  TMA box); chunks as in pallas_triton (0: whole sequence; halved for
  short sequences); num_stages -> at least 2 pipeline slots."""
  bd = 256 if blocks.block_d >= 256 and c % 256 == 0 else _LANES
  chunks = blocks.chunks or -(-t // blocks.block_t)
  while chunks > 1 and blocks.block_t * chunks // 2 >= t:
    chunks = -(-chunks // 2)
  return _Tiles(blocks.block_t, chunks, bd, max(2, blocks.num_stages),
                blocks.fast_trig)


# ----------------------------------------------------------------------------
# Kernel bodies: one pipeline step of one program, shared by the compiled
# (plgpu.kernel + emit_pipeline) and the interpreted (pallas_call) launches.
# ``i`` counts the program's steps (0 first), ``t0`` is the position of the
# step's first row. Refs: "rows" [block_t, bd] tiles of the step, "seg" /
# "chunk" [bd] vectors, "freq" [bd]; scratch refs [bd] float32 that live
# across the steps of a program. Row r of a tile is ``ref[r]``.


def _cos_sin(x, fast):
  """(cos x, sin x), float32; fast: reduce to [-pi, pi] first (the compiled
  kernel then uses the hardware approximations, see the module doc)."""
  if fast:
    n = jax.lax.round(x * (1.0 / _TWO_PI_HI),
                      jax.lax.RoundingMethod.TO_NEAREST_EVEN)
    x = (x - n * _TWO_PI_HI) - n * _TWO_PI_LO
  return jnp.cos(x), jnp.sin(x)


def _phase(ref, r, t, f, fast):
  return _cos_sin(ref[r].astype(_F32) + t * f, fast)


def _scaled(x, t, scale):
  return x if scale == "none" else x * read_scale(t, scale)


def _totals_kernel(i, t0, w_ref, a_ref, f_ref, re_ref, im_ref, acc_re, acc_im, *,
                   tiles, scale):
  """Segment sum of w c e^{i(a + t f)} (c = 1 or the read scale)."""

  @pl.when(i == 0)
  def _():
    acc_re[...] = jnp.zeros(acc_re.shape, _F32)
    acc_im[...] = jnp.zeros(acc_im.shape, _F32)

  f = f_ref[...]

  def row(r, acc):
    t = (t0 + r).astype(_F32)
    w = _scaled(w_ref[r].astype(_F32), t, scale)
    ca, sa = _phase(a_ref, r, t, f, tiles.fast)
    return acc[0] + w * ca, acc[1] + w * sa

  s_re, s_im = jax.lax.fori_loop(0, tiles.block_t, row,
                                 (acc_re[...], acc_im[...]),
                                 unroll=tiles.unroll)
  acc_re[...], acc_im[...] = s_re, s_im
  re_ref[...], im_ref[...] = s_re, s_im  # the last step's value is stored


def _fwd_kernel(i, t0, v_ref, k_ref, q_ref, f_ref, cre_ref, cim_ref, y_ref, *rest,
                tiles, scale):
  """y over the segment; with saved outputs also S at each chunk's end."""
  *saved, s_re_ref, s_im_ref = rest

  @pl.when(i == 0)
  def _():
    s_re_ref[...] = cre_ref[...]
    s_im_ref[...] = cim_ref[...]

  f = f_ref[...]

  def row(r, s):
    t = (t0 + r).astype(_F32)
    v = v_ref[r].astype(_F32)
    ck, sk = _phase(k_ref, r, t, f, tiles.fast)
    s_re, s_im = s[0] + v * ck, s[1] + v * sk
    cq, sq = _phase(q_ref, r, t, f, tiles.fast)
    y_ref[r] = _scaled(s_re * cq + s_im * sq, t, scale).astype(y_ref.dtype)
    return s_re, s_im

  s_re, s_im = jax.lax.fori_loop(0, tiles.block_t, row,
                                 (s_re_ref[...], s_im_ref[...]),
                                 unroll=tiles.unroll)
  s_re_ref[...], s_im_ref[...] = s_re, s_im
  if saved:
    saved[0][...], saved[1][...] = s_re, s_im


def _bwd_kernel(i, t0, v_ref, k_ref, q_ref, g_ref, f_ref, send_re_ref, send_im_ref,
                rre_ref, rim_ref, dv_ref, dk_ref, dq_ref, df_ref, r_re_ref,
                r_im_ref, df_acc_ref, *, tiles, scale):
  """Walks the segment backwards, chunk by chunk and row by row: R from the
  carry-in of later segments, S from the chunk's saved end-of-chunk sum."""

  @pl.when(i == 0)
  def _():
    r_re_ref[...] = rre_ref[...]
    r_im_ref[...] = rim_ref[...]
    df_acc_ref[...] = jnp.zeros(df_acc_ref.shape, _F32)

  f = f_ref[...]

  def row(j, carry):
    s_re, s_im, r_re, r_im, df = carry
    r = tiles.block_t - 1 - j
    t = (t0 + r).astype(_F32)
    v = v_ref[r].astype(_F32)
    ck, sk = _phase(k_ref, r, t, f, tiles.fast)
    cq, sq = _phase(q_ref, r, t, f, tiles.fast)
    w = _scaled(g_ref[r].astype(_F32), t, scale)
    dq = w * (s_im * cq - s_re * sq)
    r_re, r_im = r_re + w * cq, r_im + w * sq
    dk = v * (r_im * ck - r_re * sk)
    dv_ref[r] = (r_re * ck + r_im * sk).astype(dv_ref.dtype)
    dk_ref[r] = dk.astype(dk_ref.dtype)
    dq_ref[r] = dq.astype(dq_ref.dtype)
    return (s_re - v * ck, s_im - v * sk, r_re, r_im, df + t * (dk + dq))

  init = (send_re_ref[...], send_im_ref[...], r_re_ref[...], r_im_ref[...],
          df_acc_ref[...])
  _, _, r_re, r_im, df = jax.lax.fori_loop(0, tiles.block_t, row, init,
                                           unroll=tiles.unroll)
  r_re_ref[...], r_im_ref[...], df_acc_ref[...] = r_re, r_im, df
  df_ref[...] = df  # the last step's value is stored


# ----------------------------------------------------------------------------
# Launching.


_PROGRAM_AXES = ("batch", "segment", "columns")  # plgpu.kernel grid names


def _kernel_kwargs(out_type, scratch) -> dict:
  """``plgpu.kernel``'s output / scratch types: ``out_type`` /
  ``scratch_types`` (jax 0.10 and 0.11; ``out_shape`` / ``scratch_shapes``
  are deprecated aliases there, the only names in older releases)."""
  from jax.experimental.pallas import mosaic_gpu as plgpu  # noqa: PLC0415
  params = inspect.signature(plgpu.kernel).parameters
  if "out_type" in params and "scratch_types" in params:
    return {"out_type": out_type, "scratch_types": scratch}
  return {"out_shape": out_type, "scratch_shapes": scratch}


def _smem_bytes(ins, kinds, out_dtypes, out_kinds, tiles, n_scratch) -> int:
  """Shared memory of one compiled program: ``stages`` pipeline slots per
  operand (a [block_t, bd] tile for "rows", a [bd] vector otherwise) and
  the [bd] float32 scratch vectors."""
  per_slot = 0
  for dtype, kd in zip([a.dtype for a in ins] + list(out_dtypes),
                       list(kinds) + list(out_kinds)):
    rows = tiles.block_t if kd == "rows" else 1
    per_slot += rows * tiles.bd * jnp.dtype(dtype).itemsize
  return tiles.stages * per_slot + n_scratch * tiles.bd * 4


def _launch(body, ins, kinds, out_dtypes, out_kinds, *, name, shape,
            tiles: _Tiles, interpret: bool, n_scratch: int,
            reverse: bool = False, auto_barriers: bool = False, **static):
  """Runs ``body`` on the programs (B, T / segment, C / bd), each a
  sequential walk over the ``chunks`` steps of its segment.

  ``kinds`` / ``out_kinds`` say how each operand is tiled: "rows" ([B, T,
  C], a [block_t, bd] tile of the step's chunk), "seg" ([B, T / segment,
  C], a [bd] vector per program), "chunk" ([B, T / block_t, C], a [bd]
  vector per step) or "freq" ([C], a [bd] slice). ``reverse``: steps walk
  the segment's chunks back to front.

  Compiled: ``plgpu.kernel`` over the program grid (one warpgroup each);
  inside, ``plgpu.emit_pipeline`` streams the step tiles through
  ``stages`` shared-memory slots with TMA. Interpreted: ``pl.pallas_call``
  over (programs..., chunks) in the generic interpreter, which runs the
  grid in row-major order, so one program's steps are consecutive (the
  scratch carries). Both use the same block shapes and index maps, and
  call ``body`` with the same (step, first row) arguments.
  """
  from jax.experimental.pallas import mosaic_gpu as plgpu  # noqa: PLC0415

  b, t, c = shape
  bd, ch, bt = tiles.bd, tiles.chunks, tiles.block_t
  tiles = dataclasses.replace(  # (the interpreter: small HLO, fast compile)
      tiles, unroll=1 if interpret else min(bt, 16))
  body = functools.partial(body, tiles=tiles, **static)
  sq = pl.squeezed

  def chunk(s, i):  # the chunk walked at step i of segment s
    return s * ch + (ch - 1 - i if reverse else i)

  # Block shapes and index maps from (b, segment, column block, step).
  blocks = {
      "rows": ((sq, bt, bd), lambda i0, s, j, i: (i0, chunk(s, i), j)),
      "seg": ((sq, sq, bd), lambda i0, s, j, i: (i0, s, j)),
      "chunk": ((sq, sq, bd), lambda i0, s, j, i: (i0, chunk(s, i), j)),
      "freq": ((bd,), lambda i0, s, j, i: (j,)),
  }
  shapes = {"rows": shape, "seg": (b, t // tiles.segment, c),
            "chunk": (b, t // bt, c)}
  out_type = tuple(jax.ShapeDtypeStruct(shapes[kd], dt)
                   for kd, dt in zip(out_kinds, out_dtypes))
  scratch = [plgpu.SMEM((bd,), _F32)] * n_scratch
  programs = (b, t // tiles.segment, c // bd)

  if interpret:
    def interpreted(*refs):
      s, i = pl.program_id(1), pl.program_id(3)  # (b, s, j, i) grid
      body(i, chunk(s, i) * bt, *refs)

    def spec(kd):
      return pl.BlockSpec(*blocks[kd])

    return pl.pallas_call(
        interpreted,
        out_shape=out_type,
        grid=(*programs, ch),
        in_specs=[spec(kd) for kd in kinds],
        out_specs=tuple(spec(kd) for kd in out_kinds),
        scratch_shapes=scratch,
        interpret=True,
        name=name,
    )(*ins)

  smem = _smem_bytes(ins, kinds, out_dtypes, out_kinds, tiles, n_scratch)
  if smem > _SMEM_BUDGET:
    raise ValueError(
        f"{name}: tiles need {smem // 1024} KiB of shared memory per program "
        f"(> {_SMEM_BUDGET // 1024} KiB): lower block_t, block_d or "
        f"num_stages ({tiles})")

  def compiled(*refs):  # GMEM operands and outputs, then the SMEM scratch
    i0, s, j = (jax.lax.axis_index(a) for a in _PROGRAM_AXES)
    gmem, scratch_refs = refs[:len(ins) + len(out_kinds)], refs[
        len(ins) + len(out_kinds):]

    def spec(kd):
      block_shape, index = blocks[kd]
      return pl.BlockSpec(block_shape, lambda i: index(i0, s, j, i))

    def step(indices, *step_refs):
      (i,) = indices
      body(i, chunk(s, i) * bt, *step_refs, *scratch_refs)

    plgpu.emit_pipeline(
        step,
        grid=(ch,),
        in_specs=[spec(kd) for kd in kinds],
        out_specs=[spec(kd) for kd in out_kinds],
        max_concurrent_steps=tiles.stages,
    )(*gmem)

  compiled.__name__ = name  # plgpu.kernel names the kernel after its body
  return plgpu.kernel(
      compiled,
      grid=programs,
      grid_names=_PROGRAM_AXES,
      compiler_params=plgpu.CompilerParams(
          approx_math=tiles.fast,
          unsafe_no_auto_barriers=not auto_barriers,
          lowering_semantics=plgpu.LoweringSemantics.Lane,
      ),
      **_kernel_kwargs(out_type, scratch),
  )(*ins)


def _totals(w, a, f, *, scale, tiles, interpret):
  return _launch(_totals_kernel, (w, a, f), ("rows", "rows", "freq"),
                 (_F32, _F32), ("seg", "seg"), name="phasor_totals_mosaic",
                 shape=w.shape, tiles=tiles, interpret=interpret, n_scratch=2,
                 auto_barriers=True, scale=scale)


def _forward(v, k, q, f, c_re, c_im, *, save, scale, tiles, interpret):
  return _launch(_fwd_kernel, (v, k, q, f, c_re, c_im),
                 ("rows",) * 3 + ("freq", "seg", "seg"),
                 (v.dtype,) + (_F32, _F32) * save,
                 ("rows",) + ("chunk", "chunk") * save,
                 name="phasor_fwd_mosaic", shape=v.shape, tiles=tiles,
                 interpret=interpret, n_scratch=2, scale=scale)


def _backward(v, k, q, g, f, s_re, s_im, r_re, r_im, *, scale, tiles, interpret):
  return _launch(
      _bwd_kernel, (v, k, q, g, f, s_re, s_im, r_re, r_im),
      ("rows",) * 4 + ("freq", "chunk", "chunk", "seg", "seg"),
      (v.dtype, k.dtype, q.dtype, _F32), ("rows", "rows", "rows", "seg"),
      name="phasor_bwd_mosaic", shape=v.shape, tiles=tiles,
      interpret=interpret, n_scratch=3, reverse=True, scale=scale)


_memory = chunked_memory(_totals, _forward, _backward)


def phasor_memory_mosaic(v_bthd: jax.Array, k_theta: jax.Array,
                         q_theta: jax.Array, *,
                         freq_hd: jax.Array | None = None,
                         scale: str = "sqrt_t",
                         blocks: PhasorBlocks | None = None,
                         interpret: bool = False) -> jax.Array:
  """Causal phasor memory y_t = c_t Re(sum_{s<=t} v_s e^{i(k'_s - q'_t)}),
  Pallas Mosaic GPU kernels (Hopper).

  k' = k + t f, q' = q + t f with f = ``freq_hd`` (zero if None): the
  contract of :func:`reference.phasor_memory_reference`; differentiable in
  v, k, q and f via a custom VJP (module docstring).

  Args:
    v_bthd: values [B, T, H, D] (bfloat16 or float32 storage).
    k_theta, q_theta: key / query phases [B, T, H, D] (any float dtype).
    freq_hd: optional positional frequencies float32[H, D] (rad/token).
    scale: "sqrt_t" or "none".
    blocks: tiles (``DEFAULT_BLOCKS`` if None): block_t rows per pipeline
      step, chunks steps per program (0: the whole sequence), block_d
      columns of H * D per program (rounded to 128 or 256), num_stages
      pipeline slots (at least 2), fast_trig; num_warps is ignored (one
      warpgroup per program).
    interpret: run the same kernel bodies in the (generic) Pallas
      interpreter on any backend (slow; tests).

  Returns:
    y [B, T, H, D] in v's dtype.

  Raises:
    backend.Unsupported: not interpreting and the default device is not a
      Hopper (or newer) GPU.

  Example:
    >>> v = jnp.ones((1, 20, 1, 4)); th = jnp.zeros((1, 20, 1, 4))
    >>> y = phasor_memory_mosaic(v, th, th, interpret=True)
    >>> float(y[0, 3, 0, 0])   # 4 / sqrt(4)
    2.0
  """
  if not interpret:
    backend.require_hopper()
  b, t, h, d = v_bthd.shape
  c = h * d
  blocks = blocks or DEFAULT_BLOCKS
  tiles = _tiles(blocks, t, -(-c // _LANES) * _LANES)
  f_c = (jnp.zeros((c,), _F32) if freq_hd is None
         else freq_hd.astype(_F32).reshape(c))
  arrays = [a.reshape(b, t, c) for a in (v_bthd, k_theta, q_theta)]
  pad_t, pad_c = (-t) % tiles.segment, (-c) % tiles.bd
  if pad_t or pad_c:
    widths = ((0, 0), (0, pad_t), (0, pad_c))
    arrays = [jnp.pad(a, widths) for a in arrays]
    f_c = jnp.pad(f_c, ((0, pad_c),))
  y = _memory(*arrays, f_c, scale, tiles, interpret)
  return y[:, :t, :c].reshape(b, t, h, d)
