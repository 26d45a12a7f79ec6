"""TurboAdam's row-block passes: the Mosaic GPU kernels' interpreter twins
against the ``jnp`` rows (:mod:`holojax.kernels.turbo_adam.rowblock_reference`),
their lowering to Mosaic GPU on CPU, the compiled launch in jax's Mosaic GPU
interpreter, the compiled kernels on Hopper, and the whole optimizer (flat
layout) on the kernels against the XLA path."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holojax.kernels import backend
from holojax.kernels import turbo_adam as kernels
from holojax.kernels.turbo_adam import mosaic_gpu, rowblock_mosaic, rowblock_reference as rows
from holojax.optim import turbo_adam
from holojax.train.bench.optim import turbo_rows
from tests.kernels import ON_HOPPER, use_mosaic_gpu_interpreter
from tests.optim.test_turbo import inner

hopper_only = pytest.mark.skipif(not ON_HOPPER, reason="Mosaic GPU kernels need a Hopper GPU")
# The interpreter twins are matched to the rows as XLA:CPU compiles them; on a
# GPU the rows compile with XLA:GPU's maths (its own log, exp2 and row sums),
# which the compiled-kernel tests below compare to within its roundings.
cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu",
                              reason="the twins match the rows as XLA:CPU compiles them")


def _state(nb, v_bits, ref_bits, seed=0):
  """The bench's random step (:func:`turbo_rows.random_state`) with one row of
  g times 2^64 (a block in units 2^k, k > 0: :func:`rows.block_shift`)."""
  g, old, scalars, step_seed = turbo_rows.random_state(nb, v_bits, ref_bits, seed)
  return g.at[nb // 2].multiply(2.0**64), old, scalars, step_seed


def _passes(args, v_bits, ref_bits, **kw):
  """Pass A, then pass B with random alphas, by the kernels (``kw``) or the
  jnp rows in the kernels' summation order (``kw`` empty)."""
  g, old, sc, seed = args
  bits = dict(v_bits=v_bits, ref_bits=ref_bits)
  if kw:
    fa = functools.partial(rowblock_mosaic.pass_a_mosaic, **bits, **kw)
    fb = functools.partial(rowblock_mosaic.pass_b_mosaic, **bits, **kw)
  else:
    fa = functools.partial(rows.pass_a_rows, row_sum=rows.chunked_row_sum, **bits)
    fb = functools.partial(rows.pass_b_rows, row_sum=rows.chunked_row_sum, **bits)
  alpha = jax.random.normal(jax.random.key(9), (g.shape[0],))

  @jax.jit
  def both(g, old, sc, seed):
    a = fa(g, old, sc, seed)
    return a, fb(g, old, sc, a, alpha)
  a, (signs, c) = both(g, old, sc, seed)
  return dict(a._asdict(), signs=signs, c=c)


def _assert_exact(out, want):
  """Codes, bounds, levels, signs bit for bit; floats (update, sums, c) to
  float32 rounding of the array's scale (XLA's fusions and the interpreter's
  round the same expressions apart by an ulp or two; where m_t = b1 m + (1 -
  b1) g cancels, that is a larger part of a small update)."""
  for name in want:
    a, b = np.asarray(out[name]), np.asarray(want[name])
    assert a.dtype == b.dtype and a.shape == b.shape, name
    if a.dtype == np.float32:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max(), err_msg=name)
    else:
      np.testing.assert_array_equal(a, b, err_msg=name)


# nb 150: three tiles, the last partial; 37: one partial tile; 64: one whole tile.
@cpu_only
@pytest.mark.parametrize("v_bits,ref_bits,nb", [(4, 2, 150), (2, 1, 37), (8, 2, 64)])
def test_interpret_matches_rows(v_bits, ref_bits, nb):
  args = _state(nb, v_bits, ref_bits)
  _assert_exact(_passes(args, v_bits, ref_bits, interpret=True),
                _passes(args, v_bits, ref_bits))


def test_chunked_row_sum_is_a_sum():
  x = jax.random.normal(jax.random.key(0), (5, 128))
  np.testing.assert_allclose(rows.chunked_row_sum(x), jnp.sum(x, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [1, 2])
def test_reference_dots_are_the_sums_of_products(bits):
  """``reference_dots`` (from the levels and class sums) equals ``sum q r`` and
  ``sum r r`` summed entry by entry, ``r`` the decoded reference code; a row
  of zeros gives zeros."""
  q = jax.random.normal(jax.random.key(3), (6, 128)) * jnp.logspace(-3, 2, 6)[:, None]
  q = q.at[2].set(0.0)
  codes, levels, sums = rows.encode_reference_sums(q, bits)
  r = rows.decode_reference(codes, levels, bits)
  qr, rr = rows.reference_dots(levels, sums, 128)
  np.testing.assert_allclose(qr, jnp.sum(q * r, -1), rtol=1e-5)
  np.testing.assert_allclose(rr, jnp.sum(r * r, -1), rtol=1e-5)
  assert float(qr[2]) == float(rr[2]) == 0.0


def _mosaic_calls(text):
  return re.findall(r"stablehlo\.custom_call @mosaic_gpu\w*\(", text)


def _shapes(nb, v_bits, ref_bits):
  s = jax.ShapeDtypeStruct
  old = rows.OldState(s((nb, 16 * v_bits), jnp.uint8), s((nb, 2), jnp.float16),
                      s((nb, 16 * ref_bits), jnp.uint8), s((nb, ref_bits), jnp.float16),
                      s((nb, 16), jnp.uint8), s((nb,), jnp.float16), s((nb,), jnp.float32))
  a = rows.PassA(s((nb, 128), jnp.float32), old.codes, old.bounds, old.ref, old.levels,
                 s((nb,), jnp.float32), s((nb,), jnp.float32))
  return s((nb, 128), jnp.float32), old, s((7,), jnp.float32), a, s((nb,), jnp.float32)


# Swizzled float32 tiles and two slots (nb % 8 == 0, many tiles per program;
# 8-bit v: the most shared memory), plain tiles (nb = 37), 1-bit reference.
@pytest.mark.parametrize("v_bits,ref_bits,nb", [(4, 2, 100_000), (8, 2, 1000), (2, 1, 37)])
def test_lowers_to_mosaic_gpu(v_bits, ref_bits, nb, monkeypatch):
  """Both passes lower to one Mosaic GPU custom call each; no GPU needed."""
  monkeypatch.setattr(backend, "require_hopper", lambda *a, **k: None)
  g, old, sc, a, alpha = _shapes(nb, v_bits, ref_bits)
  bits = dict(v_bits=v_bits, ref_bits=ref_bits)
  for fn, args, name in (
      (functools.partial(rowblock_mosaic.pass_a_mosaic, **bits),
       (g, old, sc, jax.ShapeDtypeStruct((), jnp.uint32)), "turbo_rowblock_a_mosaic"),
      (functools.partial(rowblock_mosaic.pass_b_mosaic, **bits), (g, old, sc, a, alpha),
       "turbo_rowblock_b_mosaic")):
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert len(_mosaic_calls(text)) == 1 and name in text


def test_shared_memory_fits():
  """Two pipeline slots fit for every handled layout (8-bit v is the largest)."""
  op = rowblock_mosaic.Operand
  a = [op("f32", 128), op("codes", 128), op("codes", 32), op("codes", 16), op("row", 8),
       op("f32", 128), op("codes", 128), op("codes", 32), op("row", 8)]
  assert rowblock_mosaic._stages(a) == 2
  with pytest.raises(backend.Unsupported, match="v_bits=3"):
    rowblock_mosaic.check_layout(v_bits=3, ref_bits=2, block_size=128)
  with pytest.raises(backend.Unsupported, match="block_size=64"):
    rowblock_mosaic.check_layout(v_bits=4, ref_bits=2, block_size=64)


def test_backend_choice():
  """The row passes follow the fused v step's backend where they can."""
  choose = functools.partial(kernels.rowblock_backend, ref_bits=2, block_size=128)
  assert choose("xla", v_bits=4) == "xla"
  assert choose("interpret", v_bits=4) == "interpret"
  assert choose("interpret", v_bits=3) is None      # no row kernel: the elementwise path
  assert choose("triton", v_bits=4) is None
  assert choose("mosaic", v_bits=4) == ("mosaic" if ON_HOPPER else None)


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the Mosaic GPU interpreter check runs on CPU")
def test_compiled_launch_in_mosaic_gpu_interpreter(monkeypatch):
  """The compiled launch (plgpu.kernel + emit_pipeline, 2 programs x 2 steps,
  nb 192 = 3 tiles: the last step lies past the end) in jax's Mosaic GPU
  interpreter, against the rows (see test_mosaic_gpu.py's twin test for what
  this does and does not cover)."""
  use_mosaic_gpu_interpreter(monkeypatch, drop_layouts=True, out_of_bounds_reads="uninitialized",
                             uninitialized_memory="zero")
  # plgpu.load(optimized=False) of the plain code tiles has no interpreter rule
  # (its abstract evaluation fails there); layouts are dropped here anyway.
  monkeypatch.setattr(mosaic_gpu, "_wgmma_load", lambda ref, kind, optimized: ref[...])
  args = _state(192, 4, 2, seed=1)
  out = _passes(args, 4, 2, sms=2)
  want = _passes(args, 4, 2)
  # Compiled maths (sqrt as x rsqrt(x)) runs here: floats to rounding, and a
  # code moves only where a value sits within an ulp of its threshold.
  for name in ("bounds", "levels"):
    np.testing.assert_allclose(np.asarray(out[name], np.float32),
                               np.asarray(want[name], np.float32), rtol=2e-3, err_msg=name)
  for name in ("codes", "ref", "signs"):
    assert np.mean(np.asarray(out[name]) != np.asarray(want[name])) < 1e-3, name
  for name in ("u", "qr", "rr", "c"):
    np.testing.assert_allclose(np.asarray(out[name]), np.asarray(want[name]), rtol=1e-3,
                               atol=1e-30, err_msg=name)


@hopper_only
@pytest.mark.parametrize("v_bits,ref_bits,nb", [(4, 2, 37), (4, 2, 100_000), (2, 1, 1001),
                                                (8, 2, 5000)])
def test_compiled_matches_rows(v_bits, ref_bits, nb):
  """Compiled on the GPU against the rows on the same GPU: sqrt, log and exp2
  are Mosaic's and the row sums run in another order (ulps apart from
  XLA's), so a code, bound, level or sign can move where a value lies within
  those ulps of a threshold (rarely: at most 1e-3 of them, or one); floats
  to 1e-4 of their array's scale (m_t's cancellation makes small updates
  relatively less exact), on the blocks where no code moved."""
  args = _state(nb, v_bits, ref_bits)
  out, want = _passes(args, v_bits, ref_bits, interpret=False), _passes(args, v_bits, ref_bits)
  moved = np.zeros((nb,), bool)  # blocks where a code, bound, level or sign moved
  for name in ("codes", "ref", "signs", "bounds", "levels"):
    a, b = np.asarray(out[name]), np.asarray(want[name])
    assert (a != b).sum() <= max(1, 1e-3 * a.size), name
    moved |= (a != b).reshape(nb, -1).any(-1)
  # A moved reference code or level changes that block's q r sum (by 20% on
  # the H200, where the sum cancels), so the block sums compare elsewhere.
  keep = ~moved
  for name in ("u", "qr", "rr", "c"):
    a, b = np.asarray(out[name]), np.asarray(want[name])
    np.testing.assert_allclose(a[keep], b[keep], rtol=1e-4, atol=1e-5 * np.abs(b).max(),
                               err_msg=name)


# ----------------------------------------------------------------------------
# The optimizer.


def _run(impl, steps=20):
  """``steps`` flat-layout updates on fresh random gradients (independent of
  the parameters, so both runs see the same gradients), one jitted scan."""
  p = {"a": jnp.zeros((24, 200)), "b": jnp.zeros((3, 10, 128)), "c": jnp.zeros((40, 64)),
       "d": jnp.zeros((7,))}
  opt = turbo_adam(1e-2, tree_layout="flat", implementation=impl, min_m_compress_elements=1000)

  def body(carry, key):
    params, s = carry
    ks = dict(zip(params, jax.random.split(key, len(params))))
    g = {k: jax.random.normal(ks[k], x.shape) * (1.0 + 10.0 * (k == "b")) for k, x in
         params.items()}
    u, s = opt.update(g, s, params)
    return (jax.tree.map(jnp.add, params, u), s), None

  keys = jax.random.split(jax.random.key(11), steps)
  (params, s), _ = jax.jit(lambda c: jax.lax.scan(body, c, keys))((p, opt.init(p)))
  return params, s


@cpu_only
def test_optimizer_on_interpret_kernels_equals_xla():
  """turbo_adam(tree_layout="flat") on the row kernels' interpreter twins
  equals the XLA path over 20 steps (same seed, same rounding draws).

  The kernels sum rows in chunks, XLA in its own order, so the class sums
  behind the levels and alpha may round apart; the levels are fp16 and alpha
  comes from per-block sums (:func:`rows.reference_dots`), so every code and
  fp16 field stays equal and alpha and the parameters agree to an ulp or two."""
  got_p, got_s = _run("interpret")
  want_p, want_s = _run("xla")
  for a, b in zip(jax.tree.leaves(got_p), jax.tree.leaves(want_p)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  grp, grp_want = inner(got_s).groups["mv"], inner(want_s).groups["mv"]
  for name, a, b in zip(("codes", "bounds"), grp.v, grp_want.v):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
  for name in ("ref", "signs", "levels", "scales"):
    np.testing.assert_array_equal(np.asarray(getattr(grp.m, name)),
                                  np.asarray(getattr(grp_want.m, name)), err_msg=name)
  np.testing.assert_allclose(np.asarray(grp.m.alpha), np.asarray(grp_want.m.alpha), rtol=1e-6)


@hopper_only
def test_optimizer_on_compiled_kernels_follows_xla():
  """turbo_adam(tree_layout="flat", implementation="mosaic") on the GPU
  against the XLA path: compiled arithmetic moves a rare rounding draw and
  the CoState chain carries such moves on (see the interpret test), so the
  checks are loose: parameters to 1e-3 of their scale, v codes nearly all
  equal."""
  got_p, got_s = _run("mosaic")
  want_p, want_s = _run("xla")
  for a, b in zip(jax.tree.leaves(got_p), jax.tree.leaves(want_p)):
    b = np.asarray(b)
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-2, atol=1e-3 * np.abs(b).max())
  a, b = inner(got_s).groups["mv"].v.codes, inner(want_s).groups["mv"].v.codes
  assert np.mean(np.asarray(a) != np.asarray(b)) < 1e-2
