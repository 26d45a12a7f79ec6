"""Phasor memory, Pallas Mosaic GPU backend: the kernel bodies in the Pallas
interpreter (any backend), their lowering to Mosaic GPU (on CPU too), and
the compiled kernels on a Hopper GPU, against the associative_scan
reference, forward and backward."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holojax.kernels import backend
from holojax.kernels.phasor import PhasorBlocks, phasor_memory_reference
from holojax.kernels.phasor import mosaic_gpu
from tests.kernels import ON_HOPPER, use_mosaic_gpu_interpreter


hopper_only = pytest.mark.skipif(not ON_HOPPER, reason="Mosaic GPU kernels need a Hopper GPU")

# T = 50 is not a multiple of the 32-row segment (padding); H * D = 24
# columns are padded to one 128-column block; B > 1 and 2 segments exercise
# the grid and the carries.
SHAPE = (2, 50, 3, 8)
BLOCKS = PhasorBlocks(block_t=16, chunks=2)


def _inputs(shape=SHAPE, dtype=jnp.float32, phase_dtype=jnp.float32, seed=0, freq=True):
  ks = jax.random.split(jax.random.key(seed), 5)
  v = jax.random.normal(ks[0], shape).astype(dtype)
  k = jax.random.uniform(ks[1], shape, minval=-4.0, maxval=4.0).astype(phase_dtype)
  q = jax.random.uniform(ks[2], shape, minval=-4.0, maxval=4.0).astype(phase_dtype)
  g = jax.random.normal(ks[3], shape).astype(dtype)
  f = (jax.random.uniform(ks[4], shape[2:], minval=-0.3, maxval=0.3) if freq else None)
  return v, k, q, g, f


def _check(shape=SHAPE, blocks=BLOCKS, scale="sqrt_t", dtype=jnp.float32,
           phase_dtype=jnp.float32, freq=True, interpret=True, tol=2e-5, seed=0):
  """Forward and d/dv, dk, dq (and df) of the kernel against the reference."""
  v, k, q, g, f = _inputs(shape, dtype, phase_dtype, seed, freq)
  args = (v, k, q) + ((f,) if freq else ())

  def kernel(v, k, q, f=None):
    return mosaic_gpu.phasor_memory_mosaic(v, k, q, freq_hd=f, scale=scale, blocks=blocks,
                                           interpret=interpret)

  def reference(v, k, q, f=None):
    return phasor_memory_reference(v, k, q, f, scale=scale)

  y, vjp = jax.vjp(jax.jit(kernel), *args)
  y_ref, vjp_ref = jax.vjp(reference, *args)
  assert y.dtype == v.dtype and y.shape == v.shape

  def close(a, b, name):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * (1 + np.abs(b).max()), err_msg=name)

  close(y, y_ref, "y")
  grads = vjp(g)
  for name, d, d_ref, a in zip("vkqf", grads, vjp_ref(g), args):
    assert d.dtype == a.dtype and d.shape == a.shape, name
    close(d, d_ref, name)


@pytest.mark.parametrize("scale", ["sqrt_t", "none"])
def test_interpret_matches_reference_with_freq(scale):
  _check(scale=scale, tol=2e-5 if scale == "sqrt_t" else 1e-4)


def test_interpret_no_freq_one_chunk_per_segment_libm_trig():
  """chunks=1 (a carry per chunk), no positional frequencies, jnp.cos without
  the range reduction."""
  blocks = PhasorBlocks(block_t=16, chunks=1, fast_trig=False)
  _check(blocks=blocks, freq=False, seed=1)


def test_interpret_bf16_storage_whole_sequence_wide_columns():
  """bfloat16 values and phases; chunks=0 (one segment, no totals pass);
  H * D = 256 columns in one 256-wide block."""
  blocks = PhasorBlocks(block_t=16, chunks=0, block_d=256)
  _check(shape=(1, 40, 2, 128), blocks=blocks, dtype=jnp.bfloat16,
         phase_dtype=jnp.bfloat16, tol=3e-2, seed=2)


def _mosaic_calls(text):
  """Names of the kernels in the Mosaic GPU custom calls of lowered text
  (plgpu.kernel emits ``@mosaic_gpu_v2`` in jax 0.10.2; any suffix goes)."""
  return re.findall(r"stablehlo\.custom_call @mosaic_gpu\w*\(", text)


@pytest.mark.parametrize("blocks", [None, BLOCKS])
def test_lowers_to_mosaic_gpu(blocks, monkeypatch):
  """The compiled path (plgpu.kernel + emit_pipeline: fwd, bwd, totals)
  lowers to Mosaic GPU custom calls; no GPU needed (this is where
  unsupported ops or layouts would raise)."""
  monkeypatch.setattr(backend, "require_hopper", lambda *a, **k: None)
  s = jax.ShapeDtypeStruct
  shape = (2, 600, 4, 64)
  v, th, f = s(shape, jnp.bfloat16), s(shape, jnp.float32), s(shape[2:], jnp.float32)

  def loss(v, k, q, f):
    y = mosaic_gpu.phasor_memory_mosaic(v, k, q, freq_hd=f, blocks=blocks)
    return jnp.sum(y.astype(jnp.float32) ** 2)

  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(v, th, th, f).lower(
      lowering_platforms=("cuda",))
  text = lowered.as_text()
  assert len(_mosaic_calls(text)) == 4  # totals x2, fwd, bwd
  for name in ("phasor_totals_mosaic", "phasor_fwd_mosaic", "phasor_bwd_mosaic"):
    assert name in text, name

  # Forward only (no saved sums): totals and fwd.
  fwd = jax.jit(lambda v, k, q, f: mosaic_gpu.phasor_memory_mosaic(
      v, k, q, freq_hd=f, blocks=blocks)).trace(v, th, th, f).lower(
          lowering_platforms=("cuda",))
  assert len(_mosaic_calls(fwd.as_text())) == 2


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the Mosaic GPU interpreter check runs on CPU")
def test_compiled_launch_in_mosaic_gpu_interpreter(monkeypatch):
  """The compiled launch itself (plgpu.kernel + emit_pipeline: TMA copies
  into pipeline slots, barriers, index maps, the reverse walk, outputs
  stored per step or at the end), run by jax's Mosaic GPU interpreter on
  CPU, against the reference. chunks=3 with 2 slots reuses a slot; T = 100
  gives 3 segments (carries). Not covered: register layouts, approx trig,
  races between the threads of a warpgroup (the interpreter runs a
  warpgroup as one thread)."""
  use_mosaic_gpu_interpreter(monkeypatch)
  _check(shape=(2, 100, 3, 8), blocks=PhasorBlocks(block_t=16, chunks=3, num_stages=2),
         interpret=False, seed=3)


def test_shared_memory_guard(monkeypatch):
  monkeypatch.setattr(backend, "require_hopper", lambda *a, **k: None)
  x = jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.float32)
  blocks = PhasorBlocks(block_t=64, chunks=4, block_d=256, num_stages=3)
  with pytest.raises(ValueError, match="shared memory"):
    jax.jit(lambda v: mosaic_gpu.phasor_memory_mosaic(v, v, v, blocks=blocks)).trace(x)


@pytest.mark.skipif(ON_HOPPER, reason="checks the refusal off Hopper")
def test_compiled_needs_hopper():
  v, k, q, _, _ = _inputs()
  with pytest.raises(backend.Unsupported, match="Hopper"):
    mosaic_gpu.phasor_memory_mosaic(v, k, q)


# Compiled kernels: default (tuned) tiles at a few thousand steps, plus
# short/odd shapes through the padding paths.
@hopper_only
@pytest.mark.parametrize("shape,dtype,phase_dtype,blocks,tol", [
    ((2, 3000, 4, 128), jnp.float32, jnp.float32, None, 2e-4),
    ((2, 3000, 4, 128), jnp.bfloat16, jnp.bfloat16, None, 3e-2),
    ((2, 50, 3, 8), jnp.float32, jnp.float32, BLOCKS, 2e-4),
    ((1, 1000, 2, 128), jnp.bfloat16, jnp.float32,
     PhasorBlocks(block_t=16, chunks=4, block_d=256, num_stages=2), 3e-2),
    ((1, 1000, 2, 64), jnp.float32, jnp.float32,
     PhasorBlocks(block_t=16, chunks=4, block_d=128, num_stages=3), 2e-4),
])
def test_compiled_matches_reference(shape, dtype, phase_dtype, blocks, tol):
  _check(shape=shape, blocks=blocks, dtype=dtype, phase_dtype=phase_dtype,
         interpret=False, tol=tol, seed=7)


@hopper_only
def test_compiled_unscaled_no_freq():
  _check(shape=(2, 700, 2, 64), blocks=None, scale="none", freq=False, interpret=False,
         tol=5e-4, seed=8)
