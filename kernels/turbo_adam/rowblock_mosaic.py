"""Hopper (Pallas Mosaic GPU) row-block kernels of TurboAdam's default step.

The contract is :mod:`.rowblock_reference` with ``row_sum=chunked_row_sum``:
pass A (v step, update, reference code, per-block ``sum q r`` and ``sum r
r``) and pass B (``delta = q - alpha r``: its packed signs and ``c_b =
mean|delta|``), each one kernel that keeps a block's whole chain in
registers, so every byte of the state and the gradient moves once per pass
(pass A: g 4 + u 4 + v codes 2 x bits/8 + reference 2 x ref_bits/8 + signs
1/8 bytes per element; pass B: g 4 + v codes 2 x bits/8 + reference 2 x
ref_bits/8 + signs 2/8), where XLA's fusions each pass over the buffer for
one reduction.

Work split as in :mod:`.mosaic_gpu` (its helpers and lessons: WGMMA-layout
loads, row vectors in ``Layout.WGMMA.reduce(1)`` broadcast with
``lax.broadcast_in_dim``, swizzled float32 tiles, ``plgpu.kernel`` +
``emit_pipeline`` over 64-row tiles, no floor / ceil / sqrt rules): a tile
is ``R = 64`` blocks. Inside a tile, every packed format is cut into
*chunks* of ``W = bs / 8`` columns (16 at bs 128): column ``W i + j`` of a
``b``-bit planar code (segments of ``S = b W`` bytes) lies in byte column
``W (i mod b) + j`` at bit ``b (i div b)``, so chunk ``i`` of the g tile,
of the v codes, of the reference codes and of the signs are all ``[R, W]``
slices of their shared-memory tiles, and the row sums are chunk sums added
left to right (:func:`.rowblock_reference.chunked_row_sum`). g and the
update are ``[R, 128]`` float32 tiles swizzled by 64 bytes (a chunk is one
swizzle span); the code tiles are plain (a 16-byte chunk is below the
smallest swizzle) and loaded with ``optimized=False``.

Per-block scalars travel as rows of one float32 ``[K, NB8]`` array (``NB``
rounded up to 8; one ``[K, R]`` TMA copy per tile): pass A reads ``lo, hi``
(stored v bounds), the two reference levels, the CoState scale and the
block's alpha, and writes the new ``lo, hi`` (as stored), levels and the
reference code's class sums ``s_small, s_big, n_big``, from which XLA forms
``qr`` and ``rr`` as the reference does
(:func:`.rowblock_reference.reference_dots`); pass B reads those and the new
alpha and writes ``c``.

Compiled, ``sqrt`` is ``x rsqrt(x)`` and ``log`` / ``exp2`` are the GPU's,
so q, the levels and the sums may differ from XLA's by ulps and a code can
move where a value sits within those ulps of a threshold; the interpreter
twin (``interpret=True``, ``jnp.sqrt``) gives the reference's codes bit for
bit and its floats to an ulp.

Example::

  >>> import jax.numpy as jnp
  >>> from holojax.kernels.turbo_adam import rowblock_reference as rows
  >>> nb = 4
  >>> z = lambda k, t=jnp.uint8: jnp.zeros((nb, k), t)
  >>> old = rows.OldState(z(64), z(2, jnp.float16), z(32), z(2, jnp.float16), z(16),
  ...                     jnp.zeros((nb,), jnp.float16), jnp.zeros((nb,), jnp.float32))
  >>> sc = rows.step_scalars(0.9, 0.999, 1e-8, 1)
  >>> a = pass_a_mosaic(jnp.ones((nb, 128)), old, sc, jnp.uint32(0), v_bits=4, ref_bits=2,
  ...                   interpret=True)
  >>> round(float(a.u[0, 0]), 4)
  1.0
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from holojax.kernels import backend, quant
from holojax.kernels.turbo_adam import rowblock_reference as ref
from holojax.kernels.turbo_adam.mosaic_gpu import (
    _PARAMS, _SMEM_LIMIT, ROWS, Operand, _bounds, _ceil, _device_sms, _encode, _level, _rows,
    _sqrt, launch_tiles)

_F32, _U32 = jnp.float32, jnp.uint32
_TINY = float(jnp.finfo(jnp.float32).tiny)
BLOCK_SIZE = 128
V_BITS = (2, 4, 8)
REF_BITS = (1, 2)
# Rows of the per-block scalars arrays.
A_IN = ("lo", "hi", "lev0", "lev1", "scale", "alpha", "pad0", "pad1")
A_OUT = ("lo", "hi", "lev0", "lev1", "s_small", "s_big", "n_big", "pad")
B_IN = A_IN[:6] + ("new_lo", "new_hi", "new_lev0", "new_lev1", "new_alpha") + ("pad",) * 5


def check_layout(*, v_bits: int, ref_bits: int, block_size: int) -> None:
  """Returns if the row kernels handle this layout (block_size 128, v_bits 2 /
  4 / 8, m_ref_bits 1 / 2), else raises ``backend.Unsupported``.

  Example:
    >>> check_layout(v_bits=3, ref_bits=2, block_size=128)
    Traceback (most recent call last):
    ...
    holojax.kernels.backend.Unsupported: block_size=128, v_bits=3, m_ref_bits=2: ...
  """
  if block_size != BLOCK_SIZE or v_bits not in V_BITS or ref_bits not in REF_BITS:
    raise backend.Unsupported(
        f"block_size={block_size}, v_bits={v_bits}, m_ref_bits={ref_bits}: the row kernels "
        f"take block_size {BLOCK_SIZE}, v_bits in {V_BITS}, m_ref_bits in {REF_BITS}")


# ----------------------------------------------------------------------------
# Chunks of packed codes (module docstring).


def _chunk_bytes(ref_, i, bits, load):
  """Chunk ``i``'s ``[R, W]`` bytes of a ``bits``-bit planar code tile, and
  the shift of its codes: ``(uint32 bytes, shift)``."""
  w = ref_.shape[1] // bits
  return load(ref_.at[:, pl.ds(w * (i % bits), w)], "codes").astype(_U32), bits * (i // bits)


def _chunk_code(ref_, i, bits, load):
  """Chunk ``i``'s ``bits``-bit codes (uint32 ``[R, W]``)."""
  byte, shift = _chunk_bytes(ref_, i, bits, load)
  return (byte >> _U32(shift)) & _U32((1 << bits) - 1)


def _store_codes(ref_, words, bits):
  """Stores the ``bits`` OR-ed byte chunks (``words[i mod bits]`` collects chunk ``i``)."""
  w = ref_.shape[1] // bits
  for j, word in enumerate(words):
    ref_.at[:, pl.ds(w * j, w)][...] = word.astype(jnp.uint8)


def _sign(bit):
  """``1 - 2 bit`` of a 0/1 uint32 array, as float32."""
  return jnp.where(bit == _U32(1), -1.0, 1.0)


# ----------------------------------------------------------------------------
# The shared first half: k, gs, the shifted bounds, m_t.


@dataclasses.dataclass(frozen=True)
class _Ctx:
  """What a tile body reads: refs by name, per-block row vectors, loaders."""
  load: object
  sqrt: object
  v_bits: int
  ref_bits: int


def _decode_v(code, lo_rs, step_rs):
  """``decode_log`` of uint32 codes with broadcast bounds."""
  return jnp.where(code == _U32(0), 0.0, _level(code, lo_rs, step_rs))


def _shifted(x_r, k_r):
  """``f16(x - 2k)`` back in float32 (:func:`.rowblock_reference.shifted_bounds`)."""
  return (x_r - 2.0 * k_r).astype(jnp.float16).astype(_F32)


def _first_half(g_ref, c_ref, r_ref, s_ref, sm, params, cx: _Ctx):
  """The row vectors ``(k, lo, hi)`` (bounds shifted) and a function
  ``chunk(i) -> (gs, v_old, m_t)`` of :func:`.rowblock_reference._m_t`,
  called inside the caller's chunk loop so that only what the caller keeps
  stays in registers."""
  b1, c1 = params["b1"], params["c1"]
  n = BLOCK_SIZE // 8
  gmax = None
  for i in range(8):
    g = cx.load(g_ref.at[:, pl.ds(n * i, n)], "f32")
    mx = jnp.max(jnp.abs(g), axis=1)
    gmax = mx if gmax is None else jnp.maximum(gmax, mx)
  e_g = _ceil(jnp.log2(jnp.where(gmax > 0.0, gmax, 1.0)))
  e_v = _ceil(0.5 * sm["hi"])
  k_r = jnp.maximum(jnp.maximum(e_g, e_v) - float(ref.SHIFT_BITS), 0.0)
  unit_r = jnp.exp2(-k_r)
  lo_r, hi_r = _shifted(sm["lo"], k_r), _shifted(sm["hi"], k_r)
  shape = (g_ref.shape[0], n)
  lo_rs = _rows(lo_r, shape)
  step_rs = _rows((hi_r - lo_r) / float((1 << cx.v_bits) - 2), shape)
  lev0, lev1 = _rows(sm["lev0"], shape), _rows(sm["lev1"], shape)
  scale, alpha = _rows(sm["scale"], shape), _rows(sm["alpha"], shape)
  unit = _rows(unit_r, shape)
  sign_bytes = cx.load(s_ref, "codes").astype(_U32)

  def chunk(i):
    gs = cx.load(g_ref.at[:, pl.ds(n * i, n)], "f32") * unit
    v_old = _decode_v(_chunk_code(c_ref, i, cx.v_bits, cx.load), lo_rs, step_rs)
    r = _decode_ref(_chunk_code(r_ref, i, cx.ref_bits, cx.load), lev0, lev1, cx.ref_bits)
    delta = _sign((sign_bytes >> _U32(i)) & _U32(1)) * scale
    m_t = b1 * ((alpha * r + delta) * cx.sqrt(v_old)) + c1 * gs
    return gs, v_old, m_t

  return chunk, (k_r, lo_r, hi_r)


def _decode_ref(code, lev0, lev1, bits):
  """``decode_reference`` of one chunk's codes (levels broadcast)."""
  mag = lev0 if bits == 1 else jnp.where((code >> _U32(1)) == _U32(1), lev1, lev0)
  return _sign(code & _U32(1)) * mag


def _q(m_t, code, lo_rs, step_rs, q_max, cx: _Ctx):
  """:func:`.rowblock_reference.ratio` against the new v codes."""
  sv = cx.sqrt(_decode_v(code, lo_rs, step_rs))
  ok = sv > 0.0
  q = jnp.where(ok, m_t / jnp.where(ok, sv, 1.0), 0.0)
  return jnp.clip(q, -q_max, q_max)


def _row_sum(chunks):
  """:func:`.rowblock_reference.chunked_row_sum` of 8 ``[R, W]`` chunks."""
  out = jnp.sum(chunks[0], axis=1)
  for x in chunks[1:]:
    out = out + jnp.sum(x, axis=1)
  return out


# ----------------------------------------------------------------------------
# Pass A.


def _body_a(g_ref, c_ref, r_ref, s_ref, sm_ref, u_ref, co_ref, ro_ref, so_ref, *, params,
            row0, cx: _Ctx, iota):
  """One tile of pass A (:func:`.rowblock_reference.pass_a_rows`)."""
  sm = {name: cx.load(sm_ref.at[j], "row") for j, name in enumerate(A_IN[:6])}
  chunk, (k_r, plo_r, phi_r) = _first_half(g_ref, c_ref, r_ref, s_ref, sm, params, cx)
  rows, bs = g_ref.shape
  n = bs // 8
  shape = (rows, n)
  b2, eps, bc1, bc2 = params["b2"], params["eps"], params["bc1"], params["bc2"]
  vs, ms, mins, maxs = [], [], [], []
  for i in range(8):
    gs, v_old, m_t = chunk(i)
    v = b2 * v_old + (1.0 - b2) * (gs * gs)
    u_ref.at[:, pl.ds(n * i, n)][...] = (m_t * (1.0 / bc1)) / (cx.sqrt(v * (1.0 / bc2)) + eps)
    vs.append(v)
    ms.append(m_t)
    mins.append(jnp.min(jnp.where(v > _TINY, v, jnp.inf), axis=1))
    maxs.append(jnp.max(jnp.where(v > _TINY, v, _TINY), axis=1))
  lo_r, hi_r = _bounds(functools.reduce(jnp.minimum, mins), functools.reduce(jnp.maximum, maxs),
                       plo_r, phi_r)
  lo_r, hi_r = lo_r.astype(jnp.float16).astype(_F32), hi_r.astype(jnp.float16).astype(_F32)
  lo_rs = _rows(lo_r, shape)
  step_rs = _rows((hi_r - lo_r) / float((1 << cx.v_bits) - 2), shape)
  index = (iota(shape, 0) + row0.astype(_U32)) * _U32(bs) + iota(shape, 1)
  words = [jnp.zeros(shape, _U32) for _ in range(cx.v_bits)]
  qs = []
  for i, (v, m_t) in enumerate(zip(vs, ms)):
    u = quant.uniform_from_index(params["seed"], index + _U32(n * i))
    code = _encode(v, u, lo_rs, step_rs, bits=cx.v_bits)
    words[i % cx.v_bits] = words[i % cx.v_bits] | (code << _U32(cx.v_bits * (i // cx.v_bits)))
    qs.append(_q(m_t, code, lo_rs, step_rs, params["q_max"], cx))
  _store_codes(co_ref, words, cx.v_bits)

  a = [jnp.abs(q) for q in qs]
  s_all = _row_sum(a)
  ref_words = [jnp.zeros(shape, _U32) for _ in range(cx.ref_bits)]
  if cx.ref_bits == 1:
    lev0 = (s_all / float(bs)).astype(jnp.float16).astype(_F32)
    lev1 = lev0
    bigs = [None] * 8
    s_small, s_big, n_big = s_all, 0.0 * s_all, 0.0 * s_all
  else:
    mean_rs = _rows(s_all / float(bs), shape)
    bigs = [x > mean_rs for x in a]
    n_big = _row_sum([jnp.where(b, 1.0, 0.0) for b in bigs])
    s_big = _row_sum([jnp.where(b, x, 0.0) for b, x in zip(bigs, a)])
    s_small = _row_sum([jnp.where(b, 0.0, x) for b, x in zip(bigs, a)])
    lev0 = (s_small / jnp.maximum(float(bs) - n_big, 1.0)).astype(jnp.float16).astype(_F32)
    lev1 = (s_big / jnp.maximum(n_big, 1.0)).astype(jnp.float16).astype(_F32)
  for i, (q, big) in enumerate(zip(qs, bigs)):
    code = jnp.where(q < 0.0, _U32(1), _U32(0))
    if cx.ref_bits == 2:
      code = code | jnp.where(big, _U32(2), _U32(0))
    j = i % cx.ref_bits
    ref_words[j] = ref_words[j] | (code << _U32(cx.ref_bits * (i // cx.ref_bits)))
  _store_codes(ro_ref, ref_words, cx.ref_bits)
  outs = (lo_r + 2.0 * k_r, hi_r + 2.0 * k_r, lev0, lev1, s_small, s_big, n_big)
  for j, x in enumerate(outs):
    so_ref.at[j][...] = x


# ----------------------------------------------------------------------------
# Pass B.


def _body_b(g_ref, c_ref, r_ref, s_ref, cn_ref, rn_ref, sm_ref, so_ref, co_ref, *, params,
            row0, cx: _Ctx, iota):
  """One tile of pass B (:func:`.rowblock_reference.pass_b_rows`)."""
  del row0, iota
  sm = {name: cx.load(sm_ref.at[j], "row") for j, name in enumerate(B_IN[:11])}
  chunk, (k_r, _, _) = _first_half(g_ref, c_ref, r_ref, s_ref, sm, params, cx)
  rows, bs = g_ref.shape
  n = bs // 8
  shape = (rows, n)
  lo_r, hi_r = _shifted(sm["new_lo"], k_r), _shifted(sm["new_hi"], k_r)
  lo_rs = _rows(lo_r, shape)
  step_rs = _rows((hi_r - lo_r) / float((1 << cx.v_bits) - 2), shape)
  lev0, lev1 = _rows(sm["new_lev0"], shape), _rows(sm["new_lev1"], shape)
  alpha = _rows(sm["new_alpha"], shape)
  word = jnp.zeros(shape, _U32)
  c_r = None
  for i in range(8):
    m_t = chunk(i)[2]
    q = _q(m_t, _chunk_code(cn_ref, i, cx.v_bits, cx.load), lo_rs, step_rs, params["q_max"], cx)
    r = _decode_ref(_chunk_code(rn_ref, i, cx.ref_bits, cx.load), lev0, lev1, cx.ref_bits)
    delta = q - alpha * r
    word = word | (jnp.where(delta < 0.0, _U32(1), _U32(0)) << _U32(i))
    part = jnp.sum(jnp.abs(delta), axis=1)   # the chunked row sum, as it goes
    c_r = part if c_r is None else c_r + part
  so_ref[...] = word.astype(jnp.uint8)
  co_ref.at[0][...] = c_r / float(bs)


# ----------------------------------------------------------------------------
# Launch.

_PARAM_NAMES = ("b1", "c1", "b2", "eps", "bc1", "bc2", "q_max", "seed")


def _params(p_ref):
  """Named scalars from the float32[32] params vector (the seed bit-cast back)."""
  out = {name: p_ref[i] for i, name in enumerate(_PARAM_NAMES)}
  out["seed"] = jax.lax.bitcast_convert_type(out["seed"], _U32)
  return out


def _slot_bytes(op: Operand) -> int:
  """Shared memory of one pipeline slot of ``op`` (a row block rounded up to 1 KiB)."""
  if op.kind == "row":
    return -(-op.width * ROWS * 4 // 1024) * 1024
  return ROWS * op.width * (4 if op.kind == "f32" else 1)


def smem_bytes(operands, stages: int) -> int:
  """Shared memory of ``stages`` pipeline slots of ``operands`` (and a barrier each).

  Example:
    >>> smem_bytes([Operand("f32", 128), Operand("row", 8)], 2)
    69648
  """
  return stages * sum(_slot_bytes(op) for op in operands) + 8 * stages


def _stages(operands) -> int:
  for stages in (2, 1):
    if smem_bytes(operands, stages) <= _SMEM_LIMIT:
      return stages
  raise backend.Unsupported("row kernel tiles do not fit in shared memory")


def _with_ctx(body, v_bits, ref_bits, *refs, params, row0, load, iota, interpret):
  """``body`` with its :class:`_Ctx`: ``jnp.sqrt`` interpreted (the
  reference's), ``x rsqrt(x)`` compiled (no sqrt rule in Mosaic GPU)."""
  cx = _Ctx(load=load, sqrt=jnp.sqrt if interpret else _sqrt, v_bits=v_bits, ref_bits=ref_bits)
  body(*refs, params=params, row0=row0, cx=cx, iota=iota)


def _launch(body, ins, ops_in, ops_out, *, nb, name, interpret, sms, stages, v_bits, ref_bits):
  if stages is None:
    stages = _stages(ops_in + ops_out)
  elif (isinstance(stages, bool) or not isinstance(stages, int) or stages < 1
        or smem_bytes(ops_in + ops_out, stages) > _SMEM_LIMIT):
    raise ValueError(f"stages={stages!r} must be an int >= 1 whose slots fit in "
                     f"{_SMEM_LIMIT} bytes of shared memory (1 slot: "
                     f"{smem_bytes(ops_in + ops_out, 1)} bytes)")
  if sms is not None and (isinstance(sms, bool) or not isinstance(sms, int) or sms < 1):
    raise ValueError(f"sms={sms!r} must be an int >= 1 (programs launched at most) or None")
  return launch_tiles(functools.partial(_with_ctx, body, v_bits, ref_bits), ins, ops_in,
                      ops_out, nb=nb, name=name, params=_params, stages=stages,
                      slice_width=BLOCK_SIZE // 8,
                      interpret=interpret, sms=None if interpret else sms or _device_sms())


def _params_vector(scalars, seed):
  """float32[32]: the 7 step scalars and the seed's bits."""
  seed_f = jax.lax.bitcast_convert_type(jnp.asarray(seed).astype(_U32), _F32)
  return jnp.zeros((_PARAMS,), _F32).at[:7].set(scalars.astype(_F32)).at[7].set(seed_f)


def _row_stack(vectors, k, nb):
  """float32 ``[k, NB8]`` of per-block vectors (zero rows and columns after them)."""
  nb8 = -(-nb // 8) * 8
  return jnp.zeros((k, nb8), _F32).at[:len(vectors), :nb].set(
      jnp.stack([jnp.asarray(v, _F32) for v in vectors]))


def _old_rows(old: ref.OldState, ref_bits):
  lev1 = old.levels[:, 1] if ref_bits == 2 else old.levels[:, 0]
  return [old.bounds[:, 0], old.bounds[:, 1], old.levels[:, 0], lev1, old.scales, old.alpha]


def _prepare(g, old, v_bits, ref_bits, interpret):
  nb, bs = g.shape
  check_layout(v_bits=v_bits, ref_bits=ref_bits, block_size=bs)
  if not interpret:
    backend.require_hopper()
  return nb, bs


def pass_a_mosaic(g: jax.Array, old: ref.OldState, scalars: jax.Array, seed: jax.Array, *,
                  v_bits: int, ref_bits: int, interpret: bool = False,
                  sms: int | None = None, stages: int | None = None) -> ref.PassA:
  """Pass A on Hopper (or interpreted): :func:`.rowblock_reference.pass_a_rows`
  with ``row_sum=chunked_row_sum`` (same arguments and result).

  ``sms``: programs launched at most (None: one per streaming multiprocessor);
  ``stages``: pipeline slots per program (None: as many as fit, at most 2).
  Both only shape the compiled launch (``holojax bench turbo_rows`` times them).

  Raises:
    backend.Unsupported: a layout the kernels do not handle
      (:func:`check_layout`) or, compiled, no Hopper GPU.
  """
  nb, bs = _prepare(g, old, v_bits, ref_bits, interpret)
  ops_in = [Operand("f32", bs), Operand("codes", bs * v_bits // 8),
            Operand("codes", bs * ref_bits // 8), Operand("codes", bs // 8),
            Operand("row", len(A_IN))]
  ops_out = [Operand("f32", bs), Operand("codes", bs * v_bits // 8),
             Operand("codes", bs * ref_bits // 8), Operand("row", len(A_OUT))]
  ins = (g.astype(_F32), old.codes, old.ref, old.signs,
         _row_stack(_old_rows(old, ref_bits), len(A_IN), nb), _params_vector(scalars, seed))
  u, codes, ref_codes, sm = _launch(
      _body_a, ins, ops_in, ops_out, nb=nb, name="turbo_rowblock_a_mosaic", interpret=interpret,
      sms=sms, stages=stages, v_bits=v_bits, ref_bits=ref_bits)
  sm = sm[:, :nb]
  bounds = jnp.stack([sm[0], sm[1]], axis=-1).astype(jnp.float16)
  levels = jnp.stack([sm[2], sm[3]][:ref_bits], axis=-1).astype(jnp.float16)
  qr, rr = ref.reference_dots(levels, (sm[4], sm[5], sm[6]), bs)   # in XLA, as the reference
  return ref.PassA(u, codes, bounds, ref_codes, levels, qr, rr)


def pass_b_mosaic(g: jax.Array, old: ref.OldState, scalars: jax.Array, a: ref.PassA,
                  alpha: jax.Array, *, v_bits: int, ref_bits: int, interpret: bool = False,
                  sms: int | None = None, stages: int | None = None
                  ) -> tuple[jax.Array, jax.Array]:
  """Pass B on Hopper (or interpreted): :func:`.rowblock_reference.pass_b_rows`
  with ``row_sum=chunked_row_sum``: ``(signs uint8[NB, bs/8], c float32[NB])``;
  ``sms`` and ``stages`` as in :func:`pass_a_mosaic`."""
  nb, bs = _prepare(g, old, v_bits, ref_bits, interpret)
  w_v, w_r = bs * v_bits // 8, bs * ref_bits // 8
  ops_in = [Operand("f32", bs), Operand("codes", w_v), Operand("codes", w_r),
            Operand("codes", bs // 8), Operand("codes", w_v), Operand("codes", w_r),
            Operand("row", len(B_IN))]
  ops_out = [Operand("codes", bs // 8), Operand("row", 1)]
  lev1 = a.levels[:, 1] if ref_bits == 2 else a.levels[:, 0]
  smalls = _old_rows(old, ref_bits) + [a.bounds[:, 0], a.bounds[:, 1], a.levels[:, 0], lev1,
                                       alpha]
  ins = (g.astype(_F32), old.codes, old.ref, old.signs, a.codes, a.ref,
         _row_stack(smalls, len(B_IN), nb), _params_vector(scalars, jnp.uint32(0)))
  signs, c = _launch(
      _body_b, ins, ops_in, ops_out, nb=nb, name="turbo_rowblock_b_mosaic", interpret=interpret,
      sms=sms, stages=stages, v_bits=v_bits, ref_bits=ref_bits)
  return signs, c[0, :nb]
