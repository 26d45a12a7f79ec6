"""Sliding-window attention: the blocked parallel form, prefill + decode, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from holojax.nn.window import WindowAttention


def _layer(dim=16, heads=2, window=4, seed=0, rope=False):
  layer = WindowAttention(dim, heads, window, rope=rope, rngs=nnx.Rngs(seed))
  k1, k2 = jax.random.split(jax.random.key(seed + 1))
  layer.out.kernel[...] = jax.random.normal(k1, (dim, dim)) / 4
  layer.bias_hw[...] = jax.random.normal(k2, (heads, window))
  return layer


def _naive(layer, x_btd):
  """[T, T] masked attention in float64 numpy (RoPE at absolute positions)."""
  b, t, d = x_btd.shape
  h, w, dh = layer.heads, layer.window, layer.head_dim
  qkv = np.asarray(x_btd, np.float64) @ np.asarray(layer.qkv.kernel[...], np.float64)
  q, k, v = [a.reshape(b, t, h, dh) for a in np.split(qkv, 3, axis=-1)]
  if layer.rope:
    ang = np.arange(t)[:, None] * layer.rope_base ** (-np.arange(dh // 2) / (dh // 2))
    c, s_ = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    turn = lambda a: np.concatenate([a[..., :dh // 2] * c - a[..., dh // 2:] * s_,
                                     a[..., :dh // 2] * s_ + a[..., dh // 2:] * c], -1)
    q, k = turn(q), turn(k)
  s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(dh)
  delta = np.arange(t)[:, None] - np.arange(t)[None, :]
  ok = (delta >= 0) & (delta < w)
  s = s + np.asarray(layer.bias_hw[...], np.float64)[:, np.clip(delta, 0, w - 1)][None]
  s = np.where(ok[None, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  y = np.einsum("bhts,bshd->bthd", p, v).reshape(b, t, d)
  return y @ np.asarray(layer.out.kernel[...], np.float64)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("t", [1, 3, 4, 9, 12])
def test_parallel_form_equals_masked_attention(t, rope):
  layer = _layer(rope=rope)
  x = jax.random.normal(jax.random.key(3), (2, t, 16))
  np.testing.assert_allclose(np.asarray(layer(x)), _naive(layer, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("prompt", [1, 4, 6])
def test_prefill_then_decode_equals_parallel(prompt, rope):
  layer = _layer(window=3, rope=rope)
  x = jax.random.normal(jax.random.key(4), (2, 11, 16))
  want = np.asarray(layer(x))
  y, cache = layer.prefill(x[:, :prompt])
  np.testing.assert_allclose(np.asarray(y), want[:, :prompt], rtol=1e-4, atol=1e-5)
  step = jax.jit(layer.step)
  for t in range(prompt, 11):
    y_t, cache = step(x[:, t], cache, jnp.asarray(t, jnp.int32))
    np.testing.assert_allclose(np.asarray(y_t), want[:, t], rtol=1e-4, atol=1e-5)
  assert cache.k_bwhd.shape == (2, 3, 2, 8)  # O(W) state, whatever the context


def test_starts_as_a_no_op_and_bad_input():
  layer = WindowAttention(8, 2, 4, rngs=nnx.Rngs(0))
  assert not np.any(np.asarray(layer(jnp.ones((1, 5, 8)))))
  for kw, name in ((dict(window=0), "window"), (dict(heads=3), "heads"),
                   (dict(dim=0), "dim")):
    args = {"dim": 8, "heads": 2, "window": 4, **kw}
    with pytest.raises(ValueError, match=name):
      WindowAttention(args["dim"], args["heads"], args["window"], rngs=nnx.Rngs(0))


def test_rope_needs_an_even_head_dim_and_a_bool():
  with pytest.raises(ValueError, match="even head dim"):
    WindowAttention(6, 2, 4, rope=True, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="rope"):
    WindowAttention(8, 2, 4, rope=1, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="rope_base"):
    WindowAttention(8, 2, 4, rope=True, rope_base=0.0, rngs=nnx.Rngs(0))


def test_rope_decode_far_from_the_start_turns_only_offsets():
  """At position 10^6 the decode step still equals the parallel form's row for
  the same last W tokens (it turns keys by offsets < W, never by positions)."""
  layer = _layer(window=3, rope=True)
  x = jax.random.normal(jax.random.key(5), (1, 3, 16))
  want = np.asarray(layer(x))[:, -1]
  cache = layer.init_cache(1)
  start = 10 ** 6
  for i in range(3):
    y, cache = layer.step(x[:, i], cache, jnp.asarray(start + i, jnp.int32))
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)
