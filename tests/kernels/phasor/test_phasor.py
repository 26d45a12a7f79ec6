"""Pallas phasor kernel (interpret mode) against the associative_scan reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holojax.kernels.phasor import (PhasorBlocks, phasor_memory_pallas,
                                    phasor_memory_reference)
from holojax.nn.phasor import phasor_memory

# T = 50 is not a multiple of the 32-row segment (padding path): 2 segments
# of 2 chunks; D = 8 in two dim blocks; B, H > 1 exercise the grid.
SHAPE = (2, 50, 3, 8)
BLOCKS = PhasorBlocks(block_t=16, chunks=2, block_d=4)


def _inputs(dtype=jnp.float32, seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  v = jax.random.normal(ks[0], SHAPE).astype(dtype)
  k = jax.random.uniform(ks[1], SHAPE, minval=-4.0, maxval=4.0)
  q = jax.random.uniform(ks[2], SHAPE, minval=-4.0, maxval=4.0)
  g = jax.random.normal(ks[3], SHAPE).astype(dtype)
  return v, k, q, g


def _pallas(scale):
  return jax.jit(lambda v, k, q: phasor_memory_pallas(
      v, k, q, scale=scale, blocks=BLOCKS, interpret=True))


@pytest.mark.parametrize("scale,chunks", [("sqrt_t", 2), ("none", 2),
                                          ("sqrt_t", 1), ("sqrt_t", 3),
                                          ("sqrt_t", 0)])
def test_forward_and_grads_match_reference(scale, chunks):
  v, k, q, g = _inputs()
  blocks = dataclasses.replace(BLOCKS, chunks=chunks)
  y, vjp = jax.vjp(jax.jit(lambda v, k, q: phasor_memory_pallas(
      v, k, q, scale=scale, blocks=blocks, interpret=True)), v, k, q)
  y_ref, vjp_ref = jax.vjp(
      lambda *a: phasor_memory_reference(*a, scale=scale), v, k, q)
  tol = 1e-5 if scale == "sqrt_t" else 1e-4  # unscaled sums grow ~sqrt(T)
  np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
  for name, d, d_ref in zip("vkq", vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(d, d_ref, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("phase_dtype", [jnp.float32, jnp.bfloat16])
def test_positional_frequencies_and_their_gradient(phase_dtype):
  """k' = k + t f in-kernel: forward and d/dv, dk, dq, df match reference."""
  v, k, q, g = _inputs(seed=2)
  k, q = k.astype(phase_dtype), q.astype(phase_dtype)
  f_hd = jax.random.uniform(jax.random.key(3), SHAPE[2:], minval=-0.3,
                            maxval=0.3)

  def pallas(v, k, q, f):
    return phasor_memory_pallas(v, k, q, freq_hd=f, blocks=BLOCKS,
                                interpret=True)

  y, vjp = jax.vjp(jax.jit(pallas), v, k, q, f_hd)
  y_ref, vjp_ref = jax.vjp(phasor_memory_reference, v, k, q, f_hd)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  grads, grads_ref = vjp(g), vjp_ref(g)
  assert grads[1].dtype == phase_dtype and grads[3].shape == f_hd.shape
  for name, d, d_ref in zip("vkqf", grads, grads_ref):
    d, d_ref = np.asarray(d, np.float32), np.asarray(d_ref, np.float32)
    tol = 2e-2 if phase_dtype == jnp.bfloat16 and name in "kq" else 1e-4
    np.testing.assert_allclose(d, d_ref, rtol=tol, atol=tol * (
        1 + np.abs(d_ref).max()), err_msg=name)
  with pytest.raises(ValueError, match="freq_hd"):
    phasor_memory_pallas(v, k, q, freq_hd=f_hd[:1], interpret=True)


def test_bf16_storage():
  v, k, q, g = _inputs(jnp.bfloat16, seed=1)
  y, vjp = jax.vjp(_pallas("sqrt_t"), v, k, q)
  assert y.dtype == jnp.bfloat16
  y_ref, vjp_ref = jax.vjp(phasor_memory_reference, v, k, q)
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np.asarray(y_ref, np.float32), rtol=2e-2,
                             atol=2e-2)
  dv, dk, dq = vjp(g)
  assert dv.dtype == jnp.bfloat16 and dk.dtype == jnp.float32
  for d, d_ref in zip((dv, dk, dq), vjp_ref(g)):
    np.testing.assert_allclose(np.asarray(d, np.float32),
                               np.asarray(d_ref, np.float32), rtol=3e-2,
                               atol=3e-2)


def test_dispatch_and_errors():
  v, k, q, _ = _inputs()
  y = phasor_memory(v, k, q, implementation="pallas", interpret=True)
  np.testing.assert_allclose(y, phasor_memory_reference(v, k, q), atol=1e-5)
  if jax.default_backend() != "gpu":
    with pytest.raises(RuntimeError, match="needs a GPU"):
      phasor_memory_pallas(v, k, q)
  with pytest.raises(ValueError, match="block_t"):
    PhasorBlocks(block_t=48)
  with pytest.raises(ValueError, match="block_t"):
    PhasorBlocks(block_t=8)
  with pytest.raises(ValueError, match="chunks"):
    PhasorBlocks(chunks=-1)
  with pytest.raises(ValueError, match="shape"):
    phasor_memory_pallas(v, k[:, :3], q, interpret=True)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="compiled kernel")
def test_compiled_kernel_on_gpu_matches_reference():
  """The GPU path (hardware cos/sin, tuned tiles) at a few thousand steps.

  The suite runs on CPU (tests/conftest.py); on a GPU machine run it with
  ``JAX_PLATFORMS=cuda pytest tests/kernels -k compiled``.
  """
  shape = (2, 3000, 4, 128)
  ks = jax.random.split(jax.random.key(7), 5)
  v = jax.random.normal(ks[0], shape)
  k, q = (jax.random.uniform(kk, shape, minval=-3.0, maxval=3.0)
          for kk in ks[1:3])
  f = jax.random.uniform(ks[3], shape[2:], minval=-0.05, maxval=0.05)
  g = jax.random.normal(ks[4], shape)
  y, vjp = jax.vjp(lambda *a: phasor_memory_pallas(*a[:3], freq_hd=a[3]),
                   v, k, q, f)
  y_ref, vjp_ref = jax.vjp(phasor_memory_reference, v, k, q, f)
  np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
  for name, d, d_ref in zip("vkqf", vjp(g), vjp_ref(g)):
    scale = float(jnp.max(jnp.abs(d_ref)))
    np.testing.assert_allclose(d / scale, d_ref / scale, atol=1e-4,
                               err_msg=name)
