"""Pallas phasor kernel (interpret mode) against the associative_scan reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holojax.kernels.phasor import (PhasorBlocks, phasor_memory_pallas,
                                    phasor_memory_reference)
from holojax.nn.phasor import phasor_memory

# T = 50 is not a multiple of block_t (padding path), 4 chunks; D = 8 in two
# dim blocks; B, H > 1 exercise the grid.
SHAPE = (2, 50, 3, 8)
BLOCKS = PhasorBlocks(block_t=16, block_d=4)


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


@pytest.mark.parametrize("scale", ["sqrt_t", "none"])
def test_forward_and_grads_match_reference(scale):
  v, k, q, g = _inputs()
  y, vjp = jax.vjp(_pallas(scale), v, k, q)
  y_ref, vjp_ref = jax.vjp(
      lambda *a: phasor_memory_reference(*a, scale=scale), v, k, q)
  tol = 1e-5 if scale == "sqrt_t" else 1e-4  # unscaled sums grow ~sqrt(T)
  np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
  for name, d, d_ref in zip("vkq", vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(d, d_ref, rtol=tol, atol=tol, err_msg=name)


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
  with pytest.raises(ValueError, match="shape"):
    phasor_memory_pallas(v, k[:, :3], q, interpret=True)
