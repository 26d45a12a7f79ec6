"""TurboAdam's fused v step, Pallas Mosaic GPU backend: the kernel body in
the Pallas interpreter (any backend), its lowering to Mosaic GPU (on CPU
too), the compiled launch in jax's Mosaic GPU interpreter (CPU), and the
compiled kernel on a Hopper GPU, against the reference."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holojax.kernels import backend, quant
from holojax.kernels import turbo_adam as kernels
from holojax.kernels.turbo_adam import mosaic_gpu
from tests.kernels import ON_HOPPER, use_mosaic_gpu_interpreter

hopper_only = pytest.mark.skipif(not ON_HOPPER, reason="Mosaic GPU kernels need a Hopper GPU")


def _args(bits, nb=37, bs=128, seed=0):
  """Gradients spread over rows by e^N(0,1), m = 0.1 g, v codes of |N(0,1)|."""
  g = jax.random.normal(jax.random.key(bits + seed), (nb, bs))
  g = g * jnp.exp(jax.random.normal(jax.random.key(9 + seed), (nb, 1)))
  v = jnp.abs(jax.random.normal(jax.random.key(3 + seed), (nb, bs)))
  c, lo, hi = quant.encode_log(v, quant.hash_uniform(jnp.uint32(1), v.shape), bits=bits)
  return (g, 0.1 * g, quant.pack_bits(c, bits), lo, hi, jnp.array([0.999, 1e-8, 0.1, 0.01]),
          jnp.uint32(5))


def _assert_exact(out, ref, rtol=1e-6):
  """Update to float32 rounding; codes and bounds bit for bit."""
  np.testing.assert_allclose(np.asarray(out[0]), np.asarray(ref[0]), rtol=rtol)
  for name, a, b in zip(("codes", "lo", "hi"), out[1:], ref[1:]):
    assert a.dtype == b.dtype and a.shape == b.shape, name
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def _run(args, bits, **kw):
  return jax.jit(functools.partial(mosaic_gpu.fused_v_update_mosaic, bits=bits, **kw))(*args)


# nb = 37: one tile, partly past the end (and not a multiple of 8); nb = 150
# (bs 64): three tiles.
@pytest.mark.parametrize("bits,nb,bs", [(2, 37, 128), (4, 37, 128), (8, 37, 128),
                                        (4, 150, 64)])
def test_interpret_matches_reference(bits, nb, bs):
  args = _args(bits, nb, bs)
  _assert_exact(_run(args, bits, interpret=True),
                kernels.fused_v_update_reference(*args, bits=bits))


def test_lowerable_maths_is_exact():
  """_floor / _ceil equal jnp.floor / ceil (quarter-octave lattice values
  and their float neighbours included); _sqrt is sqrt to an ulp."""
  x = jnp.concatenate([jnp.linspace(-300.0, 300.0, 4801),
                       jax.random.normal(jax.random.key(0), (1000,)) * 1e4])
  x = jnp.concatenate([x, jnp.nextafter(x, jnp.inf), jnp.nextafter(x, -jnp.inf)])
  np.testing.assert_array_equal(mosaic_gpu._floor(x), jnp.floor(x))
  np.testing.assert_array_equal(mosaic_gpu._ceil(x), jnp.ceil(x))
  y = jnp.abs(x)
  np.testing.assert_allclose(mosaic_gpu._sqrt(y), jnp.sqrt(y), rtol=2.5e-7)
  assert float(mosaic_gpu._sqrt(jnp.float32(0.0))) == 0.0


def _mosaic_calls(text):
  """The Mosaic GPU custom calls of lowered text (``@mosaic_gpu_v2`` in jax 0.10.2)."""
  return re.findall(r"stablehlo\.custom_call @mosaic_gpu\w*\(", text)


# Swizzled tiles with two pipeline slots (nb % 8 == 0, many tiles per
# program; 8 bits fills shared memory to 1 KiB of the limit), plain tiles
# with one tile (nb = 37, bs 64: 16-byte code rows), block_size 256 (one slot).
@pytest.mark.parametrize("bits,nb,bs", [(4, 100_000, 128), (8, 100_000, 128), (2, 37, 64),
                                        (4, 999, 256)])
def test_lowers_to_mosaic_gpu(bits, nb, bs, monkeypatch):
  """The compiled path lowers to one Mosaic GPU custom call; no GPU needed
  (unsupported ops, layouts, copies or too much shared memory raise here)."""
  monkeypatch.setattr(backend, "require_hopper", lambda *a, **k: None)
  s = jax.ShapeDtypeStruct
  args = (s((nb, bs), jnp.float32), s((nb, bs), jnp.float32), s((nb, bs * bits // 8), jnp.uint8),
          s((nb,), jnp.float16), s((nb,), jnp.float16), s((4,), jnp.float32), s((), jnp.uint32))
  fn = functools.partial(mosaic_gpu.fused_v_update_mosaic, bits=bits)
  text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  assert len(_mosaic_calls(text)) == 1
  assert "turbo_adam_fused_v_update_mosaic" in text


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the Mosaic GPU interpreter check runs on CPU")
def test_compiled_launch_in_mosaic_gpu_interpreter(monkeypatch):
  """The compiled launch (plgpu.kernel + emit_pipeline: TMA copies into two
  pipeline slots, the index maps of 2 programs x 2 steps, the scalars read
  from global memory) run by jax's Mosaic GPU interpreter on CPU, against the
  reference. nb = 192: 3 tiles, so the last step lies wholly past the end
  (its loads read zeros, its stores land nowhere, as with TMA). Not covered:
  register layouts (layout casts are dropped here), swizzling, a tile that
  is partly past the end (this interpreter drops such a store, TMA clips it;
  the compiled GPU test covers it) and races between threads."""
  use_mosaic_gpu_interpreter(monkeypatch, drop_layouts=True, out_of_bounds_reads="uninitialized",
                             uninitialized_memory="zero")
  args = _args(4, nb=192, seed=1)
  _assert_exact(_run(args, 4, sms=2), kernels.fused_v_update_reference(*args, bits=4))


def test_layout_checks_and_launch_shape():
  assert mosaic_gpu.stages_for(bits=8, block_size=128) == 2
  assert mosaic_gpu.stages_for(bits=4, block_size=256) == 1
  with pytest.raises(backend.Unsupported, match="16 bytes"):
    mosaic_gpu.check_layout(bits=2, block_size=32)
  with pytest.raises(backend.Unsupported, match="shared memory"):
    mosaic_gpu.check_layout(bits=2, block_size=512)
  with pytest.raises(backend.Unsupported, match="v_bits=3"):
    mosaic_gpu.check_layout(bits=3, block_size=128)
  launch = mosaic_gpu._launch_shape(tiles=133, sms=132, stages=2)
  assert launch.programs * launch.steps >= 133 and launch.steps == 2
  assert mosaic_gpu._launch_shape(tiles=1, sms=132, stages=2).stages == 1


def test_backend_choice():
  """"mosaic" runs only on Hopper: forced elsewhere it raises ValueError
  with the reason; in a sequence it falls back."""
  sel = kernels.select_implementation
  assert sel(bits=4, block_size=128, implementation=("mosaic", "xla")) == (
      "mosaic" if ON_HOPPER else "xla")
  with pytest.raises(ValueError, match="implementation='mosaic' cannot run here: .*shared memory"):
    sel(bits=8, block_size=512, implementation="mosaic")
  assert sel(bits=8, block_size=512, implementation=("mosaic", "xla")) == "xla"
  if not ON_HOPPER:
    with pytest.raises(ValueError, match="implementation='mosaic' cannot run here: .*Hopper"):
      sel(bits=4, block_size=128, implementation="mosaic")
    with pytest.raises(ValueError, match="implementation='pallas' cannot run here: .*Hopper"):
      sel(bits=4, block_size=128, implementation="pallas")


@pytest.mark.skipif(ON_HOPPER, reason="checks the refusal off Hopper")
def test_compiled_needs_hopper():
  with pytest.raises(backend.Unsupported, match="Hopper"):
    mosaic_gpu.fused_v_update_mosaic(*_args(4, nb=8), bits=4)


def _assert_close_compiled(out, ref, bits, bs):
  """The compiled kernel against the XLA reference on the same GPU.

  Compiled, sqrt is x rsqrt(x) and log / exp2 are Mosaic's, not XLA's, so
  values may differ by an ulp or two (none of this in the interpreter twin,
  which matches exactly). What that can change, and what is allowed:

  * update: relative 1e-5 (a bug is off by O(1));
  * bounds: a block's lo or hi can move by one quarter-octave step (0.25)
    where its log2 extremum lies within those ulps of a lattice point (its
    codes then differ and are not compared): in at most 0.1% of the blocks;
  * codes, in blocks whose bounds agree: a code can move by one level where
    the uniform lies within the ulps of its rounding threshold (the
    probability is ~|dp|, 1e-7 / (level gap / value), ~2e-5 at 8 bits): at
    most 1e-4 of the codes, each by exactly one level.

  A wrong index, shift, segment, bound or rounding rule changes most codes
  by any amount and fails every one of these.
  """
  np.testing.assert_allclose(np.asarray(out[0]), np.asarray(ref[0]), rtol=1e-5, atol=1e-30)
  lo, hi, lo_ref, hi_ref = (np.asarray(a, np.float32) for a in (*out[2:], *ref[2:]))
  same = (lo == lo_ref) & (hi == hi_ref)
  moved = np.abs(np.concatenate([lo - lo_ref, hi - hi_ref]))
  assert np.isin(moved, (0.0, 0.25)).all(), "bounds moved by more than one lattice step"
  assert (~same).sum() <= max(1, 1e-3 * same.size), f"{(~same).sum()} blocks' bounds differ"
  c, c_ref = (np.asarray(quant.unpack_bits(a, bits, bs), np.int32)[same] for a in (out[1], ref[1]))
  diff = np.abs(c - c_ref)
  assert diff.max(initial=0) <= 1, "a code moved by more than one level"
  assert (diff > 0).sum() <= max(2, 1e-4 * diff.size), f"{(diff > 0).sum()} codes differ"


# Compiled: one partial tile (nb 37, plain tiles), partial last tile with
# swizzled tiles (200), many tiles per program and two slots (100000),
# block_size 64 (16-byte code rows) and 256 (one slot).
@hopper_only
@pytest.mark.parametrize("bits,nb,bs", [(2, 37, 128), (4, 200, 128), (8, 1001, 128),
                                        (4, 100_000, 128), (2, 100_000, 128),
                                        (8, 100_000, 128), (2, 37, 64), (4, 3000, 256)])
def test_compiled_matches_reference(bits, nb, bs):
  args = _args(bits, nb, bs)
  out = _run(args, bits)
  ref = jax.jit(functools.partial(kernels.fused_v_update_reference, bits=bits))(*args)
  _assert_close_compiled(out, ref, bits, bs)
  via_api = jax.jit(functools.partial(kernels.fused_v_update, bits=bits,
                                      implementation="mosaic"))(*args)
  _assert_exact(via_api, out, rtol=0)


def test_compiled_check_catches_bugs():
  """_assert_close_compiled passes the exact twin and fails a kernel that
  draws its uniforms for the wrong elements (a real bug: every code right in
  distribution, wrong in detail)."""
  bits, bs = 4, 128
  args = _args(bits, 300, bs)
  ref = kernels.fused_v_update_reference(*args, bits=bits)
  _assert_close_compiled(_run(args, bits, interpret=True), ref, bits, bs)
  shifted = kernels.fused_v_update_reference(*args[:-1], jnp.uint32(6), bits=bits)
  with pytest.raises(AssertionError, match="codes differ"):
    _assert_close_compiled(shifted, ref, bits, bs)
