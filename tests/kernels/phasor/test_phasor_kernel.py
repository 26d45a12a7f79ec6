"""Phasor memory: the Pallas backends against the associative_scan reference,
and the public op's backend choice and errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holojax.kernels.phasor import (PhasorBlocks, phasor_memory, phasor_memory_reference,
                                    select_implementation)
from tests.kernels import ON_HOPPER, PALLAS

# T = 50 is not a multiple of the 32-row segment (padding path): 2 segments
# of 2 chunks; D = 8 in two dim blocks; B, H > 1 exercise the grid.
SHAPE = (2, 50, 3, 8)
BLOCKS = PhasorBlocks(block_t=16, chunks=2, block_d=4)
ON_GPU = jax.default_backend() == "gpu"


def _inputs(dtype=jnp.float32, seed=0, shape=SHAPE):
  ks = jax.random.split(jax.random.key(seed), 4)
  v = jax.random.normal(ks[0], shape).astype(dtype)
  k = jax.random.uniform(ks[1], shape, minval=-4.0, maxval=4.0)
  q = jax.random.uniform(ks[2], shape, minval=-4.0, maxval=4.0)
  g = jax.random.normal(ks[3], shape).astype(dtype)
  return v, k, q, g


def _memory(impl, blocks=BLOCKS, **kw):
  return jax.jit(lambda v, k, q, f=None: phasor_memory(
      v, k, q, freq_hd=f, implementation=impl, blocks=blocks, **kw))


@pytest.mark.parametrize("impl", PALLAS)
@pytest.mark.parametrize("scale,chunks", [("sqrt_t", 2), ("none", 2), ("sqrt_t", 1),
                                          ("sqrt_t", 3), ("sqrt_t", 0)])
def test_forward_and_grads_match_reference(impl, scale, chunks):
  v, k, q, g = _inputs()
  blocks = dataclasses.replace(BLOCKS, chunks=chunks)
  y, vjp = jax.vjp(_memory(impl, blocks, scale=scale), v, k, q)
  y_ref, vjp_ref = jax.vjp(lambda *a: phasor_memory_reference(*a, scale=scale), v, k, q)
  tol = 1e-5 if scale == "sqrt_t" else 1e-4  # unscaled sums grow ~sqrt(T)
  tol *= 10 if impl == "triton" else 1  # hardware cos/sin
  np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
  for name, d, d_ref in zip("vkq", vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(d, d_ref, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("impl", PALLAS)
@pytest.mark.parametrize("phase_dtype", [jnp.float32, jnp.bfloat16])
def test_positional_frequencies_and_their_gradient(impl, phase_dtype):
  """k' = k + t f in-kernel: forward and d/dv, dk, dq, df match reference."""
  v, k, q, g = _inputs(seed=2)
  k, q = k.astype(phase_dtype), q.astype(phase_dtype)
  f_hd = jax.random.uniform(jax.random.key(3), SHAPE[2:], minval=-0.3, maxval=0.3)
  y, vjp = jax.vjp(_memory(impl), v, k, q, f_hd)
  y_ref, vjp_ref = jax.vjp(phasor_memory_reference, v, k, q, f_hd)
  tol = 1e-4 if impl == "triton" else 1e-5
  np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
  grads, grads_ref = vjp(g), vjp_ref(g)
  assert grads[1].dtype == phase_dtype and grads[3].shape == f_hd.shape
  for name, d, d_ref in zip("vkqf", grads, grads_ref):
    d, d_ref = np.asarray(d, np.float32), np.asarray(d_ref, np.float32)
    tol = 2e-2 if phase_dtype == jnp.bfloat16 and name in "kq" else 1e-4
    np.testing.assert_allclose(d, d_ref, rtol=tol, atol=tol * (
        1 + np.abs(d_ref).max()), err_msg=name)


@pytest.mark.parametrize("impl", PALLAS)
def test_bf16_storage(impl):
  v, k, q, g = _inputs(jnp.bfloat16, seed=1)
  y, vjp = jax.vjp(_memory(impl), v, k, q)
  assert y.dtype == jnp.bfloat16
  y_ref, vjp_ref = jax.vjp(phasor_memory_reference, v, k, q)
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32),
                             rtol=2e-2, atol=2e-2)
  dv, dk, dq = vjp(g)
  assert dv.dtype == jnp.bfloat16 and dk.dtype == jnp.float32
  for d, d_ref in zip((dv, dk, dq), vjp_ref(g)):
    np.testing.assert_allclose(np.asarray(d, np.float32), np.asarray(d_ref, np.float32),
                               rtol=3e-2, atol=3e-2)


# The compiled kernel at a few thousand steps with the default (tuned) tiles;
# the interpreter runs the same body at a size a CPU finishes quickly.
LONG = {"triton": (2, 3000, 4, 128), "interpret": (1, 600, 2, 8)}


@pytest.mark.parametrize("impl", PALLAS)
def test_default_tiles_long_sequence_match_reference(impl):
  shape = LONG[impl]
  ks = jax.random.split(jax.random.key(7), 5)
  v = jax.random.normal(ks[0], shape)
  k, q = (jax.random.uniform(kk, shape, minval=-3.0, maxval=3.0) for kk in ks[1:3])
  f = jax.random.uniform(ks[3], shape[2:], minval=-0.05, maxval=0.05)
  g = jax.random.normal(ks[4], shape)
  y, vjp = jax.vjp(_memory(impl, blocks=None), v, k, q, f)
  y_ref, vjp_ref = jax.vjp(phasor_memory_reference, v, k, q, f)
  np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
  for name, d, d_ref in zip("vkqf", vjp(g), vjp_ref(g)):
    scale = float(jnp.max(jnp.abs(d_ref)))
    np.testing.assert_allclose(d / scale, d_ref / scale, atol=1e-4, err_msg=name)


def test_backend_choice():
  """Default order ("mosaic", "triton", "xla"); forced names, the alias and sequences."""
  v, k, q, _ = _inputs()
  gpu = "mosaic" if ON_HOPPER else "triton"
  assert select_implementation(v, k, q) == (gpu if ON_GPU else "xla")
  if ON_GPU:
    assert select_implementation(v, k, q, implementation="pallas") == gpu
  assert select_implementation(v, k, q, implementation=["triton", "interpret"]) == (
      "triton" if ON_GPU else "interpret")
  assert select_implementation(v, k, q, implementation="interpret") == "interpret"
  y = phasor_memory(v, k, q, implementation="interpret", blocks=BLOCKS)
  np.testing.assert_allclose(y, phasor_memory_reference(v, k, q), atol=1e-5)
  if not ON_GPU:
    for name in ("mosaic", "triton", "pallas"):
      with pytest.raises(ValueError, match=f"implementation='{name}' cannot run here.*GPU"):
        phasor_memory(v, k, q, implementation=name)
  with pytest.raises(ValueError, match="'cudnn' is not one of"):
    select_implementation(v, k, q, implementation="cudnn")


def test_runs_in_a_named_scope():
  v, k, q, _ = _inputs()
  hlo = jax.jit(lambda *a: phasor_memory(*a, implementation="xla")).lower(
      v, k, q).as_text(debug_info=True)
  assert "phasor_memory/xla" in hlo


def test_argument_errors():
  v, k, q, _ = _inputs()
  with pytest.raises(ValueError, match="k_theta shape"):
    phasor_memory(v, k[:, :3], q, implementation="interpret")
  with pytest.raises(ValueError, match="freq_hd"):
    phasor_memory(v, k, q, freq_hd=jnp.zeros((1, 8)), implementation="interpret")
  with pytest.raises(ValueError, match="scale"):
    phasor_memory(v, k, q, scale="t")
  with pytest.raises(ValueError, match="blocks"):
    phasor_memory(v, k, q, blocks={"block_t": 16})
  with pytest.raises(ValueError, match="block_t"):
    PhasorBlocks(block_t=48)
  with pytest.raises(ValueError, match="block_t"):
    PhasorBlocks(block_t=8)
  with pytest.raises(ValueError, match="chunks"):
    PhasorBlocks(chunks=-1)
