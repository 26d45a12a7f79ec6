"""Hopper-native (Pallas Mosaic GPU) fused TurboAdam v step.

The "mosaic" backend of ``holojax.kernels.turbo_adam.fused_v_update``,
beside the Triton one (:mod:`.pallas_triton`); the contract is
:mod:`.reference`. For blocks ``[nb, bs]`` of one tensor (b2, eps, bc1 =
1 - b1^t, bc2 = 1 - b2^t; per block row the fp16 log2 bounds lo, hi of the
packed ``bits``-bit log-scale v)::

  v_old  = 0 if code == 0 else 2**(lo + (code - 1) (hi - lo) / (2**bits - 2))
  v      = b2 v_old + (1 - b2) g^2
  update = (m (1 / bc1)) / (sqrt(v (1 / bc2)) + eps)
  lo', hi' = log_bounds(min_{v > tiny} v, max v; lo, hi)   (per block row)
  code'  = encode_stochastic(v, u(seed, row * bs + column); lo', hi')

(:mod:`holojax.kernels.quant` has the sticky grid and the unbiased
rounding). Planar packing (see :mod:`.pallas_triton`) puts the codes of
columns ``i S .. (i+1) S - 1`` (``S = bs bits / 8``, ``G = 8 / bits``
segments) in bits ``bits i ..`` of byte column ``0 .. S - 1``, so the
kernel (un)packs with shifts of whole ``[R, S]`` segment tiles.

Work split. A tile is ``R = 64`` block rows (one warpgroup's WGMMA row tile:
4 warps x 16 rows). ``plgpu.kernel`` launches ``P`` programs (one
warpgroup each, about one per SM: each holds ~100-230 KiB of shared memory,
so one fits on an SM); program ``p`` walks tiles ``p T .. p T + T - 1``
(``T = ceil(tiles / P)`` steps) with ``plgpu.emit_pipeline``: TMA copies
stream the next tile's g, m, codes and bounds into the other slot of a
2-slot shared-memory ring while the warpgroup computes this one, and the
update, codes and bounds stream back out the same way. Per tile: load the
codes ``[R, S]`` once; for each segment load g and m ``[R, S]``, decode,
update the moment, store the update, keep v in registers (``bs / 2``
float32 registers per thread); the new bounds are row reductions of the
``G`` segments (min / max over the columns); then encode each segment with
uniforms from :func:`quant.uniform_from_index` on the global element index
(the reference's numbers: codes match it) and OR the shifted codes into one
byte per column.

Bytes moved per element: g 4 + m 4 read, update 4 written, v codes
``bits / 8`` read and written, plus 8 bytes of bounds per block row: 12 +
bits/4 + 8/bs (13.06 at 4 bits, bs 128): every byte once, the minimum for
this contract.

Mosaic GPU specifics, found by lowering on CPU with jax 0.10.2 (the tests
do it) and what they forced:

* Launch: ``plgpu.kernel`` + ``emit_pipeline``, not ``pl.pallas_call``
  (jax 0.11 lowers Mosaic GPU kernels only through ``plgpu.kernel``; see
  :mod:`holojax.kernels.phasor.mosaic_gpu`). The interpreter twin
  (``interpret=True``) runs the same body per tile under ``pl.pallas_call``.
  Both launches are :func:`launch_tiles`, shared with the row-block kernels
  (:mod:`.rowblock_mosaic`).
* Layouts: every ``[R, S]`` tile is loaded in the WGMMA layout (``R % 64 ==
  0``, ``S % 8 == 0``), where a row lives in one quad of lanes, so the
  per-row min / max are in-warp shuffles (no shared-memory scratch:
  ``reduction_scratch_bytes=0``); row vectors (bounds) are in
  ``Layout.WGMMA.reduce(1)`` and are broadcast with ``lax.broadcast_in_dim``
  straight to ``[R, S]`` (a ``[R, 1]`` array has no WGMMA layout, so
  ``x[:, None]`` does not lower). uint8 code tiles load in the same layout
  and are widened in registers; the iota of the element index is
  ``plgpu.broadcasted_iota`` with that layout. Segments are column slices
  ``ref.at[:, i S:(i+1) S]`` of the shared-memory tile.
* Swizzle: with 128/64/32-byte swizzled shared-memory tiles
  (``TilingTransform((8, swizzle / itemsize))``) the WGMMA-layout loads and
  stores are bank-conflict free; TMA then needs the array's row count to be
  a multiple of the 8-row tiling, so swizzling is used when ``nb % 8 ==
  0``, else plain tiles and ``plgpu.load(optimized=False)`` (8-way bank
  conflicts on the float32 tiles; shared memory still outruns HBM there).
* No padding: the last tile may overhang ``nb`` and a program's last steps
  may lie wholly past it (``P T > tiles``); TMA fills out-of-bounds rows
  of a load with zeros and drops out-of-bounds rows of a store, and rows
  are independent, so no input is copied to pad it.
* Small operands: a TMA copy moves a multiple of 128 bytes and its rows a
  multiple of 16, and every shared-memory buffer takes a multiple of 1 KiB:
  lo and hi travel as one ``float16[2, nb8]`` array (``nb`` rounded up to 8;
  stacking them is a copy of 4 bytes per block row), and the four scalars
  and the seed (bit-cast to float32) are read from global memory once per
  program, as scalars, not staged.
* No ``floor`` / ``ceil`` / ``sqrt`` lowering rule: :func:`_floor`,
  :func:`_ceil` (exact, from float -> int32 truncation) and :func:`_sqrt`
  (``x rsqrt(x)``); ``jnp.log2`` is ``log(x) / log(2)``, the reference's
  own formula. In the interpreter twin every result equals the reference's
  (the tests check update to float rounding, codes and bounds exactly).
  Compiled, ``sqrt`` via ``rsqrt`` and the GPU's ``log`` / ``exp2`` may
  differ from XLA's by an ulp or two: the update agrees to ~1e-6 relative;
  a code can move by one level only where its uniform falls within those
  ulps of its rounding threshold, and a block's bound by one quarter-octave
  step only where its extremum's log2 falls within them of the lattice.
  The compiled test allows exactly that, rarely
  (``_assert_close_compiled`` in tests/kernels/turbo_adam/test_mosaic_gpu.py).
  Not yet measured on a GPU.
* Shared memory (:func:`smem_bytes`): per pipeline slot ``R bs 12`` (g,
  m, update) ``+ 2 R S`` (codes) bytes, plus 2 KiB of bounds; two slots take
  202 / 210 / 226 KiB at 2 / 4 / 8 bits for bs 128, of the 227 a Hopper
  block may use. Layouts that need more with one slot are refused
  (:func:`check_layout`); where two slots do not fit (bs 256), one slot is
  used (no overlap of copies and compute).
* Barriers: ``unsafe_no_auto_barriers``: the body never reads a
  shared-memory word it writes, and ``emit_pipeline`` itself synchronises
  the warpgroup around its TMA copies (``commit_smem`` and
  ``wait_smem_to_gmem`` each end in a warpgroup barrier).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from holojax.kernels import backend, quant
from holojax.kernels.phasor.mosaic_gpu import _kernel_kwargs
from holojax.kernels.turbo_adam import pallas_triton

ROWS = 64                  # block rows per tile: one WGMMA row tile
DEFAULT_SMS = 132          # programs when the device does not say (H100 / H200)
_SMEM_LIMIT = 227 * 1024   # shared memory a Hopper block may use (232448 bytes)
_PARAMS = 32               # float32 scalars vector
_F32, _U32 = jnp.float32, jnp.uint32
_TINY = float(np.finfo(np.float32).tiny)


# ----------------------------------------------------------------------------
# Layout checks and the launch shape.


def smem_bytes(*, bits: int, block_size: int, stages: int) -> int:
  """Shared memory of one compiled program, as Mosaic GPU allocates it:
  ``stages`` slots of g, m, update (``[R, bs]`` float32) and codes in and
  out (``[R, S]`` uint8); the bounds in and out (``[2, R]`` float16), each
  buffer rounded up to 1 KiB; an 8-byte barrier per slot.

  Example:
    >>> smem_bytes(bits=4, block_size=128, stages=2)
    215056
  """
  seg = block_size * bits // 8
  tiles = stages * ROWS * (block_size * 4 * 3 + seg * 2)
  bounds = 2 * -(-stages * 2 * ROWS * 2 // 1024) * 1024
  return tiles + bounds + 8 * stages


def stages_for(*, bits: int, block_size: int) -> int:
  """Pipeline slots: 2 (loads overlap compute) where they fit in shared
  memory, else 1, else 0 (the layout cannot run)."""
  for stages in (2, 1):
    if smem_bytes(bits=bits, block_size=block_size, stages=stages) <= _SMEM_LIMIT:
      return stages
  return 0


def check_layout(*, bits: int, block_size: int) -> None:
  """Returns if the Mosaic kernel handles this layout, else raises
  ``backend.Unsupported``: the Triton kernel's layouts
  (:func:`.pallas_triton.check_layout`) whose code rows are at least 16
  bytes (a TMA copy's row) and whose tiles fit in shared memory.

  Example:
    >>> check_layout(bits=8, block_size=512)
    Traceback (most recent call last):
    ...
    holojax.kernels.backend.Unsupported: block_size=512, v_bits=8: one 64-row tile needs 450 KiB ...
  """
  pallas_triton.check_layout(bits=bits, block_size=block_size)
  seg = block_size * bits // 8
  if seg < 16:
    raise backend.Unsupported(
        f"block_size={block_size}, v_bits={bits}: code rows of {seg} bytes (the Mosaic "
        "kernel copies rows of >= 16 bytes: block_size * v_bits >= 128)")
  if not stages_for(bits=bits, block_size=block_size):
    need = smem_bytes(bits=bits, block_size=block_size, stages=1)
    raise backend.Unsupported(
        f"block_size={block_size}, v_bits={bits}: one {ROWS}-row tile needs "
        f"{need // 1024} KiB of shared memory (> {_SMEM_LIMIT // 1024} KiB)")


@dataclasses.dataclass(frozen=True)
class _Launch:
  """Programs, steps per program and pipeline slots for ``tiles`` tiles."""

  programs: int
  steps: int
  stages: int


def _launch_shape(tiles: int, sms: int, stages: int) -> _Launch:
  """At most ``sms`` programs of ``ceil(tiles / programs)`` steps each.

  Example:
    >>> _launch_shape(4096, 132, 2)
    _Launch(programs=128, steps=32, stages=2)
  """
  steps = -(-tiles // sms)
  return _Launch(-(-tiles // steps), steps, min(stages, steps))


def _device_sms() -> int:
  """Streaming multiprocessors of the default device (``DEFAULT_SMS`` if it
  does not say, e.g. lowering on a CPU)."""
  return getattr(jax.devices()[0], "core_count", 0) or DEFAULT_SMS


# ----------------------------------------------------------------------------
# Maths that lowers to Mosaic GPU (no floor / ceil / sqrt rule there).


def _floor(x):
  """``floor(x) = t - [t > x]``, ``t = trunc(x)`` (float -> int32 ->
  float): exact for ``|x| < 2**31``.

  Example:
    >>> _floor(jnp.array([-1.5, -1.0, 0.0, 2.75]))
    Array([-2., -1.,  0.,  2.], dtype=float32)
  """
  t = x.astype(jnp.int32).astype(_F32)
  return jnp.where(t > x, t - 1.0, t)


def _ceil(x):
  """``ceil(x) = t + [t < x]``, ``t = trunc(x)``: exact for ``|x| < 2**31``.

  Example:
    >>> _ceil(jnp.array([-1.5, -1.0, 0.0, 2.25]))
    Array([-1., -1.,  0.,  3.], dtype=float32)
  """
  t = x.astype(jnp.int32).astype(_F32)
  return jnp.where(t < x, t + 1.0, t)


def _sqrt(x):
  """``sqrt(x) = x rsqrt(x)`` for ``x > 0`` and 0 at 0 (``x >= 0``).

  Example:
    >>> _sqrt(jnp.array([0.0, 4.0]))
    Array([0., 2.], dtype=float32)
  """
  pos = x > 0.0
  return jnp.where(pos, x * jax.lax.rsqrt(jnp.where(pos, x, 1.0)), 0.0)


def _rows(x_r, shape):
  """A row vector ``[R]`` broadcast along the columns: ``[R, S]``."""
  return jax.lax.broadcast_in_dim(x_r, shape, (0,))


def _level(k, lo, step):
  """``2**(lo + (k - 1) step)``: :func:`quant.log_level`."""
  return jnp.exp2(lo + (k.astype(_F32) - 1.0) * step)


def _bounds(xmin_r, xmax_r, plo_r, phi_r):
  """:func:`quant.log_bounds_from_extrema` (with previous bounds) written
  with :func:`_floor` / :func:`_ceil`; float32 ``[R]`` in and out."""
  any_pos = xmax_r > _TINY
  snap = float(quant.LOG_SNAP)
  need_lo = jnp.log2(jnp.where(any_pos, xmin_r, 1.0))
  need_hi = jnp.log2(jnp.where(any_pos, xmax_r, 1.0))
  lo = _floor((need_lo - quant.LOG_HEADROOM) * snap) / snap
  hi = _ceil((need_hi + quant.LOG_HEADROOM) * snap) / snap
  keep = ((phi_r > plo_r) & (plo_r <= need_lo) & (need_hi <= phi_r)
          & (need_hi - need_lo >= 0.5 * (phi_r - plo_r) - 1.0))
  lo = jnp.where(keep, plo_r, lo)
  hi = jnp.where(keep, phi_r, hi)
  return jnp.where(any_pos, lo, 0.0), jnp.where(any_pos, hi, 0.0)


def _encode(x, u, lo, step, *, bits):
  """:func:`quant.encode_log_with_bounds` of one ``[R, S]`` segment, with
  the bounds broadcast to ``[R, S]`` (``lo``, ``step``); uint32 codes."""
  safe_step = jnp.where(step > 0.0, step, 1.0)
  pos = (jnp.log2(jnp.maximum(x, _TINY)) - lo) / safe_step
  k = jnp.clip(_floor(pos), 0.0, float((1 << bits) - 3)).astype(jnp.int32)
  k = jnp.where(step > 0.0, k, 0)
  below = x < jnp.exp2(lo)
  code_lo = jnp.where(below, 0, k + 1)
  code_hi = jnp.where(below, 1, k + 2)
  a = jnp.where(below, 0.0, _level(code_lo, lo, step))
  gap = _level(code_hi, lo, step) - a
  p = jnp.where(gap > 0.0, (x - a) / jnp.where(gap > 0.0, gap, 1.0), 0.0)
  p = jnp.clip(p, 0.0, 1.0)
  return jnp.where(u < p, code_hi, code_lo).astype(_U32)


# ----------------------------------------------------------------------------
# The kernel body: one tile of R block rows, shared by the compiled
# (plgpu.kernel + emit_pipeline) and the interpreted (pallas_call) launches.
# ``load(ref, kind)`` reads a whole ref ("f32" / "codes": a [R, S] tile,
# "row": a [R] vector) and ``iota(shape, dim)`` makes uint32 indices, each
# in the compiled layouts or plainly in the interpreter.


def _body(g_ref, m_ref, c_ref, b_ref, u_ref, co_ref, bo_ref, *, params, row0, bits, load,
          iota, interpret=False):
  """One tile: ``g_ref``, ``m_ref``, ``u_ref`` ``[R, bs]``; ``c_ref``,
  ``co_ref`` ``[R, S]`` uint8; the bounds ``[R]`` float16; ``p_ref``
  float32[32] = (b2, eps, bc1, bc2, seed bits, 0...); ``row0``: the tile's
  first block row. ``interpret``: unused (the same maths both ways)."""
  del interpret
  rows, bs = g_ref.shape
  seg = c_ref.shape[1]
  n_step = float((1 << bits) - 2)
  b2, eps, bc1, bc2, seed_f = params
  seed = jax.lax.bitcast_convert_type(seed_f, _U32)
  byte_rs = load(c_ref, "codes").astype(_U32)
  shape = byte_rs.shape
  plo_r = load(b_ref.at[0], "row").astype(_F32)
  phi_r = load(b_ref.at[1], "row").astype(_F32)
  lo_rs, step_rs = _rows(plo_r, shape), _rows((phi_r - plo_r) / n_step, shape)
  mask = _U32((1 << bits) - 1)

  v_rs = []
  for i in range(bs // seg):
    cols = pl.ds(i * seg, seg)
    code = (byte_rs >> _U32(bits * i)) & mask
    v_old = jnp.where(code == 0, 0.0, _level(code, lo_rs, step_rs))
    g = load(g_ref.at[:, cols], "f32")
    v = b2 * v_old + (1.0 - b2) * (g * g)
    m = load(m_ref.at[:, cols], "f32")
    u_ref.at[:, cols][...] = (m * (1.0 / bc1)) / (_sqrt(v * (1.0 / bc2)) + eps)
    v_rs.append(v)

  mins = [jnp.min(jnp.where(v > _TINY, v, jnp.inf), axis=1) for v in v_rs]
  maxs = [jnp.max(jnp.where(v > _TINY, v, _TINY), axis=1) for v in v_rs]
  lo_r, hi_r = _bounds(functools.reduce(jnp.minimum, mins),
                       functools.reduce(jnp.maximum, maxs), plo_r, phi_r)
  lo16_r, hi16_r = lo_r.astype(jnp.float16), hi_r.astype(jnp.float16)
  lo_r, hi_r = lo16_r.astype(_F32), hi16_r.astype(_F32)
  lo_rs, step_rs = _rows(lo_r, shape), _rows((hi_r - lo_r) / n_step, shape)

  index = (iota(shape, 0) + row0.astype(_U32)) * _U32(bs) + iota(shape, 1)
  word = jnp.zeros(shape, _U32)
  for i, v in enumerate(v_rs):
    u = quant.uniform_from_index(seed, index + _U32(i * seg))
    word = word | (_encode(v, u, lo_rs, step_rs, bits=bits) << _U32(bits * i))
  co_ref[...] = word.astype(jnp.uint8)
  bo_ref.at[0][...] = lo16_r
  bo_ref.at[1][...] = hi16_r


def _plain_load(ref, kind):
  del kind
  return ref[...]


def _plain_iota(shape, dim):
  return jax.lax.broadcasted_iota(_U32, shape, dim)


def _wgmma_load(ref, kind, *, optimized):
  """``ref[...]`` in the WGMMA layout (a tile) or its row layout (a
  vector); ``optimized[kind]``: the ref is swizzled (conflict-free
  transfers), else ``plgpu.load(optimized=False)``."""
  from jax.experimental.pallas import mosaic_gpu as plgpu  # noqa: PLC0415
  layout = plgpu.Layout.WGMMA.reduce(1) if kind == "row" else plgpu.Layout.WGMMA
  if optimized[kind]:
    return plgpu.layout_cast(ref[...], layout)
  return plgpu.load(ref, (), layout=layout, optimized=False)


def _wgmma_iota(shape, dim):
  from jax.experimental.pallas import mosaic_gpu as plgpu  # noqa: PLC0415
  return plgpu.broadcasted_iota(_U32, shape, dim, layout=plgpu.Layout.WGMMA)


def _swizzle(seg_w, dtype, nb):
  """Shared-memory transforms of a tile cut into ``seg_w``-wide column
  segments: 8-row tiles one swizzle span wide, the widest swizzle (128, 64
  or 32 bytes) dividing a segment's bytes; none when ``nb % 8`` (TMA's
  tiled copies need whole 8-row tiles) or below 32 bytes."""
  from jax.experimental.pallas import mosaic_gpu as plgpu  # noqa: PLC0415
  size = jnp.dtype(dtype).itemsize
  for sw in (128, 64, 32) if nb % 8 == 0 else ():
    if seg_w * size % sw == 0:
      return (plgpu.TilingTransform((8, sw // size)), plgpu.SwizzleTransform(sw))
  return ()


def _compiler_params(plgpu):
  """Lane semantics, no automatic barriers (module docstring), no
  reduction scratch (the row reductions stay inside warps)."""
  kw = dict(lowering_semantics=plgpu.LoweringSemantics.Lane, unsafe_no_auto_barriers=True)
  fields = {f.name for f in dataclasses.fields(plgpu.CompilerParams)}
  if "reduction_scratch_bytes" in fields:
    kw["reduction_scratch_bytes"] = 0
  return plgpu.CompilerParams(**kw)


def _params(p_ref):
  """(b2, eps, bc1, bc2, seed bits as float32) from the scalars vector."""
  return tuple(p_ref[k] for k in range(5))


@dataclasses.dataclass(frozen=True)
class Operand:
  """One operand of a row-tile kernel: ``kind`` "f32" (an ``[R, width]``
  float32 tile), "codes" (``[R, width]`` uint8) or "row" (``[width, R]``
  per-block rows of a ``[width, nb8]`` array, ``dtype``)."""
  kind: str
  width: int
  dtype: object = _F32

  def block(self):
    return (self.width, ROWS) if self.kind == "row" else (ROWS, self.width)

  def array_shape(self, nb: int):
    return (self.width, -(-nb // 8) * 8) if self.kind == "row" else (nb, self.width)

  def array_dtype(self):
    return {"f32": _F32, "codes": jnp.uint8}.get(self.kind, self.dtype)


def launch_tiles(body, ins, ops_in, ops_out, *, nb, name, params, stages, slice_width,
                 interpret, sms=None):
  """Runs ``body`` over the ``R``-row tiles of the arrays ``ins`` (then a
  float32[32] params vector, read once per program as scalars by
  ``params(ref)``): ``body(*in_refs, *out_refs, params=, row0=, load=, iota=,
  interpret=)``, with ``load(ref, kind)`` / ``iota(shape, dim)`` as in
  :func:`_body`. Compiled: ``plgpu.kernel`` + ``emit_pipeline`` with
  ``stages`` slots (module docstring; tiles swizzled for loads of
  ``slice_width`` columns where :func:`_swizzle` allows); ``interpret``:
  the same body per tile under ``pl.pallas_call(interpret=True)``. Returns
  the outputs (``ops_out``: tiles ``[nb, width]``, rows ``[width, nb8]``)."""
  out_type = tuple(jax.ShapeDtypeStruct(op.array_shape(nb), op.array_dtype()) for op in ops_out)
  tiles = -(-nb // ROWS)
  n_in = len(ops_in)
  if interpret:
    def kernel(*refs):
      body(*refs[:n_in], *refs[n_in + 1:], params=params(refs[n_in]),
           row0=pl.program_id(0) * ROWS, load=_plain_load, iota=_plain_iota, interpret=True)

    spec = lambda op: pl.BlockSpec(op.block(), (lambda t: (0, t)) if op.kind == "row"
                                   else (lambda t: (t, 0)))
    return pl.pallas_call(
        kernel, out_shape=out_type, grid=(tiles,),
        in_specs=[spec(op) for op in ops_in] + [pl.BlockSpec((_PARAMS,), lambda t: (0,))],
        out_specs=tuple(spec(op) for op in ops_out), interpret=True, name=name)(*ins)

  from jax.experimental.pallas import mosaic_gpu as plgpu  # noqa: PLC0415
  launch = _launch_shape(tiles, sms, stages)
  tf = {"f32": _swizzle(slice_width, _F32, nb), "codes": _swizzle(slice_width, jnp.uint8, nb)}
  load = functools.partial(_wgmma_load, optimized={
      "f32": bool(tf["f32"]), "codes": bool(tf["codes"]), "row": True})

  def kernel(*refs):
    p = jax.lax.axis_index("programs")
    scalars = params(refs[n_in])  # scalar loads from global memory, once

    def tile(i):
      return p * launch.steps + i

    def spec(op):
      if op.kind == "row":
        return plgpu.BlockSpec(op.block(), lambda i: (0, tile(i)))
      return plgpu.BlockSpec(op.block(), lambda i: (tile(i), 0), transforms=tf[op.kind])

    def step(indices, *step_refs):
      (i,) = indices
      body(*step_refs, params=scalars, row0=tile(i) * ROWS, load=load, iota=_wgmma_iota,
           interpret=False)

    plgpu.emit_pipeline(
        step, grid=(launch.steps,), in_specs=[spec(op) for op in ops_in],
        out_specs=[spec(op) for op in ops_out], max_concurrent_steps=launch.stages)(
            *refs[:n_in], *refs[n_in + 1:])

  kernel.__name__ = name
  return plgpu.kernel(kernel, grid=(launch.programs,), grid_names=("programs",),
                      compiler_params=_compiler_params(plgpu),
                      **_kernel_kwargs(out_type, []))(*ins)


def fused_v_update_mosaic(g: jax.Array, m: jax.Array, codes: jax.Array, lo: jax.Array,
                          hi: jax.Array, scalars: jax.Array, seed: jax.Array, *, bits: int,
                          interpret: bool = False, sms: int | None = None):
  """Pallas Mosaic GPU version of :func:`.reference.fused_v_update_reference`
  (same inputs and outputs; module docstring).

  Args:
    g, m: ``float32[nb, bs]`` gradient and first moment blocks.
    codes: ``uint8[nb, bs*bits/8]`` packed v codes; lo, hi: ``float16[nb]``.
    scalars: ``float32[4]`` = (b2, eps, bc1, bc2); seed: ``uint32[]``.
    bits: v code width (2, 4 or 8).
    interpret: run the same kernel body per tile in the (generic) Pallas
      interpreter, on any backend (slow; tests).
    sms: programs to launch at most (default: the device's multiprocessor
      count, ``DEFAULT_SMS`` if it does not say).

  Returns:
    ``(update float32[nb, bs], codes uint8[nb, bs*bits/8], lo, hi float16[nb])``.

  Raises:
    backend.Unsupported: a layout the kernel does not handle
      (:func:`check_layout`) or, compiled, no Hopper GPU.

  Example:
    >>> g = jnp.ones((4, 128)); m = 0.1 * g
    >>> codes = jnp.zeros((4, 64), jnp.uint8); lo = hi = jnp.zeros((4,), jnp.float16)
    >>> sc = jnp.array([0.999, 1e-8, 0.1, 0.001])
    >>> upd, new_codes, new_lo, new_hi = fused_v_update_mosaic(
    ...     g, m, codes, lo, hi, sc, jnp.uint32(0), bits=4, interpret=True)
    >>> round(float(upd[0, 0]), 4)   # (0.1 / 0.1) / sqrt(0.001 / 0.001)
    1.0
  """
  nb, bs = g.shape
  check_layout(bits=bits, block_size=bs)
  if not interpret:
    backend.require_hopper()
  seg, nb8 = codes.shape[-1], -(-nb // 8) * 8
  seed_f = jax.lax.bitcast_convert_type(jnp.asarray(seed).astype(_U32), _F32)
  params = jnp.zeros((_PARAMS,), _F32).at[:4].set(scalars.astype(_F32)).at[4].set(seed_f)
  # lo and hi as one [2, R] copy per tile; rows of a multiple of 16 bytes.
  bounds = jnp.zeros((2, nb8), jnp.float16).at[:, :nb].set(jnp.stack([lo, hi]))
  ins = (g.astype(_F32), m.astype(_F32), codes, bounds, params)
  f32, code = Operand("f32", bs), Operand("codes", seg)
  row = Operand("row", 2, jnp.float16)
  upd, new_codes, new_bounds = launch_tiles(
      functools.partial(_body, bits=bits), ins, [f32, f32, code, row], [f32, code, row],
      nb=nb, name="turbo_adam_fused_v_update_mosaic", params=_params,
      stages=stages_for(bits=bits, block_size=bs), slice_width=seg, interpret=interpret,
      sms=None if interpret else sms or _device_sms())
  return upd, new_codes, new_bounds[0, :nb], new_bounds[1, :nb]
