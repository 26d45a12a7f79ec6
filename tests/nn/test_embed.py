"""Embed: the one-hot lookup equals nnx.Embed's gather, values and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from holojax.nn import Embed


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lookup_and_gradient_equal_gather(dtype):
  """The one-hot-matmul gradient equals nnx.Embed's scatter-add."""
  vocab = 64
  emb = Embed(vocab, 16, dtype=dtype, rngs=nnx.Rngs(0))
  ref = nnx.Embed(vocab, 16, dtype=dtype, rngs=nnx.Rngs(0))
  ids = jnp.array([[0, 5, 5, 5, vocab - 1], [3, 3, 2, 1, 0]])  # repeats
  np.testing.assert_array_equal(emb(ids), ref(ids))
  assert emb(ids).dtype == ref(ids).dtype

  def loss(m):
    return jnp.sum(m(ids).astype(jnp.float32) * jnp.arange(16.0)[None, None])

  g, g_ref = nnx.grad(loss)(emb), nnx.grad(loss)(ref)
  np.testing.assert_allclose(g["embedding"][...], g_ref["embedding"][...],
                             rtol=1e-6)


def test_same_params_as_nnx_embed():
  a = nnx.state(Embed(10, 4, rngs=nnx.Rngs(0)), nnx.Param)
  b = nnx.state(nnx.Embed(10, 4, rngs=nnx.Rngs(0)), nnx.Param)
  assert jax.tree.structure(nnx.to_pure_dict(a)) == jax.tree.structure(
      nnx.to_pure_dict(b))
  with pytest.raises(ValueError, match="integer"):
    Embed(10, 4, rngs=nnx.Rngs(0))(jnp.ones((2,)))


def test_chunked_onehot_gradient(monkeypatch):
  """More tokens than one chunk holds: the scan over chunks sums them all."""
  from holojax.nn import embed as embed_mod
  monkeypatch.setattr(embed_mod, "ONEHOT_CHUNK_ELEMS", 3 * 10)  # 3 tokens
  table = jax.random.normal(jax.random.key(0), (10, 4))
  ids = jnp.array([[1, 1, 9, 0, 1], [2, 2, 2, 9, 3]])
  w = jax.random.normal(jax.random.key(1), (2, 5, 4))
  got = jax.grad(lambda t: jnp.sum(embed_mod.embed_lookup(t, ids) * w))(table)
  ref = jax.grad(lambda t: jnp.sum(jnp.take(t, ids, axis=0) * w))(table)
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
