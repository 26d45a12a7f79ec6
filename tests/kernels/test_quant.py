"""Block quantisation shared by the optimizers and their kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holojax.kernels import quant


@pytest.mark.parametrize("bits", quant.PACK_WIDTHS)
def test_pack_roundtrip_and_size(bits):
  codes = jax.random.randint(jax.random.key(bits), (3, 256), 0, 2**bits).astype(jnp.uint8)
  packed = quant.pack_bits(codes, bits)
  assert packed.dtype == jnp.uint8 and packed.shape == (3, 256 * bits // 8)
  np.testing.assert_array_equal(np.asarray(quant.unpack_bits(packed, bits, 256)),
                                np.asarray(codes))


@pytest.mark.parametrize("bits", quant.LOG_WIDTHS)
def test_stochastic_encode_is_unbiased(bits):
  x = quant.to_blocks(jnp.exp(3.0 * jax.random.normal(jax.random.key(0), (512,))), 128)
  x = x.at[0, :5].set(0.0)

  def decoded(seed):
    c, lo, hi = quant.encode_log(x, quant.hash_uniform(seed, x.shape), bits=bits)
    return quant.decode_log(quant.unpack_bits(quant.pack_bits(c, bits), bits, 128), lo, hi,
                            bits=bits)

  k = 1000
  samples = jax.lax.map(decoded, jnp.arange(k, dtype=jnp.uint32))  # [k, nb, bs]
  # Block sums: many elements per block, so their mean over k draws is near
  # normal with the sample standard error (single elements whose round-up
  # probability is ~0 or ~1 are never sampled well by 1000 draws).
  sums = samples.sum(-1)
  err = jnp.abs(sums.mean(0) - x.sum(-1))
  se = sums.std(0) / np.sqrt(k)
  assert bool(jnp.all(err <= 6 * se + 1e-5 * x.sum(-1))), (err, se)
  assert bool(jnp.all(samples[:, 0, :5] == 0))
