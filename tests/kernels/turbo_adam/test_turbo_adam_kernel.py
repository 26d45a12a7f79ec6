"""TurboAdam's fused v step: the Pallas backends against the reference, and
the public op's backend choice."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holojax.kernels import quant
from holojax.kernels import turbo_adam as kernels
from tests.kernels import ON_HOPPER, PALLAS


def _args(bits, nb=37):
  g = jax.random.normal(jax.random.key(bits), (nb, 128))
  g = g * jnp.exp(jax.random.normal(jax.random.key(9), (nb, 1)))
  v = jnp.abs(jax.random.normal(jax.random.key(3), (nb, 128)))
  c, lo, hi = quant.encode_log(v, quant.hash_uniform(jnp.uint32(1), v.shape), bits=bits)
  return (g, 0.1 * g, quant.pack_bits(c, bits), lo, hi, jnp.array([0.999, 1e-8, 0.1, 0.01]),
          jnp.uint32(5))


@pytest.mark.parametrize("impl", PALLAS)
@pytest.mark.parametrize("bits", kernels.KERNEL_WIDTHS)
def test_kernel_matches_reference(impl, bits):
  """Same update (to float32 rounding) and the same codes and bounds: the
  kernel draws the reference's random numbers."""
  args = _args(bits)
  ref = kernels.fused_v_update_reference(*args, bits=bits)
  out = jax.jit(functools.partial(kernels.fused_v_update, bits=bits,
                                  implementation=impl))(*args)
  np.testing.assert_allclose(np.asarray(out[0]), np.asarray(ref[0]), rtol=1e-6)
  for a, b in zip(out[1:], ref[1:]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_backend_choice():
  """Default order ("xla",): the kernels are opt-in; "pallas" is "mosaic" on
  Hopper, else "triton"; a layout a kernel cannot pack falls back in a
  sequence and fails when forced."""
  on_gpu = jax.default_backend() == "gpu"
  assert kernels.select_implementation(bits=4, block_size=128) == "xla"
  assert kernels.select_implementation(bits=4, block_size=128,
                                       implementation=("pallas", "interpret")) == (
      "mosaic" if ON_HOPPER else "triton" if on_gpu else "interpret")
  assert kernels.select_implementation(bits=3, block_size=128,
                                       implementation=("interpret", "xla")) == "xla"
  with pytest.raises(ValueError, match="implementation='interpret' cannot run here: v_bits=3"):
    kernels.select_implementation(bits=3, block_size=128, implementation="interpret")
  with pytest.raises(ValueError, match="cannot run here: block_size=96"):
    kernels.select_implementation(bits=4, block_size=96, implementation="interpret")
  with pytest.raises(ValueError, match="'cuda' is not one of"):
    kernels.select_implementation(bits=4, block_size=128, implementation="cuda")


def test_runs_in_a_named_scope():
  args = _args(4, nb=2)
  fn = functools.partial(kernels.fused_v_update, bits=4, implementation="interpret")
  assert "fused_v_update/interpret" in jax.jit(fn).lower(*args).as_text(debug_info=True)
