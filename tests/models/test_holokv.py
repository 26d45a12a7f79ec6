"""HoloKV on the tiny Llama: the even-boundary rule, N/k physical slots, k=1 equals the
full cache, prefill equals decode, no recompilation per token, both reads, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from holojax.models import holokv
from holojax.nn.embed import rope
from holojax.models.kv_cache import CacheSpec
from holojax.models.llama import LLAMA_PRESETS, Llama
from holojax.optim.accounting import tree_bytes

TINY = LLAMA_PRESETS["llama-tiny"]  # 2 kv heads of 16 channels


@pytest.fixture(scope="module")
def tiny():
  return Llama(TINY, rngs=nnx.Rngs(0))


def _ids(shape, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, 256, jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _extend_all(graphdef, state, ids, spec):
  model = nnx.merge(graphdef, state)
  return model.extend(ids, model.init_cache(ids.shape[0], 32, spec))[0]


# --- codes and the even-boundary rule -------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_codes_are_orthogonal_and_pair_constant(k):
  c = holokv.codes(k, 64)
  np.testing.assert_array_equal(c @ c.T, 64 * np.eye(k))
  np.testing.assert_array_equal(c[:, :32], c[:, 32:])  # HF pairs (i, i + 32)
  holokv.check_codes(c, "half")
  holokv.check_codes(holokv.codes(k, 64, "adjacent"), "adjacent")


@pytest.mark.parametrize("k", [2, 4, 8])
def test_code_commutes_with_the_models_rope(k):
  """diag(c) R_t x == R_t diag(c) x for the model's rotation, random x and positions."""
  x = jax.random.normal(jax.random.key(k), (2, 11, 3, 64))
  pos = jax.random.randint(jax.random.key(1), (11,), 0, 8192)
  for c in holokv.codes(k, 64)[:, None, None, None, :]:
    np.testing.assert_allclose(rope(x * c, pos, 1e5), rope(x, pos, 1e5) * c, atol=1e-5)
    np.testing.assert_allclose(holokv.rotate(x * c, pos, 1e5), rope(x, pos, 1e5) * c, atol=1e-5)


def test_breaking_the_rule_breaks_commutation():
  """The seed's codes (d mod k) on GGUF's adjacent pairs: code-then-rotate differs from
  rotate-then-code by the size of the signal, and q . k after coding depends on it."""
  c = holokv.seed_codes(4, 64)[:, None, None, None, :]
  with pytest.raises(ValueError, match="differs on RoPE pair"):
    holokv.check_codes(c[:, 0, 0, 0], "adjacent")
  x = jax.random.normal(jax.random.key(0), (1, 16, 1, 64))
  pos = jnp.arange(16) * 97
  a = holokv.rotate(x * c[1], pos, 1e4, "adjacent")
  b = holokv.rotate(x, pos, 1e4, "adjacent") * c[1]
  assert float(jnp.abs(a - b).max()) > 0.5
  # The rule-abiding codes on the same pairing commute.
  c_ok = holokv.codes(4, 64, "adjacent")[1][None, None, None]
  np.testing.assert_allclose(holokv.rotate(x * c_ok, pos, 1e4, "adjacent"),
                             holokv.rotate(x, pos, 1e4, "adjacent") * c_ok, atol=1e-5)


def test_demodulation_recovers_the_token_plus_crosstalk():
  """sqrt(k) c_j * K_s = key_j + sum_{i != j} (c_j c_i) * key_i, exactly."""
  c = holokv.HoloKVCache.init(1, 8, 1, 16, jnp.float32, k=4)
  key = jax.random.normal(jax.random.key(0), (1, 4, 1, 16))
  c = c.write(key, key, 0)
  codes = holokv.codes(4, 16)
  for j in range(4):
    k_hat = 2.0 * codes[j] * c.ks[0, 0, 0]
    cross = sum(codes[j] * codes[i] * key[0, i, 0] for i in range(4) if i != j)
    np.testing.assert_allclose(k_hat, key[0, j, 0] + cross, atol=1e-5)


# --- the cache -------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_cache_holds_n_over_k_slots(k):
  c = CacheSpec("holokv", k=k, sinks=0).init(2, 64, 2, 16, jnp.bfloat16)
  assert c.ks.shape == (2, 64 // k, 2, 16) and c.kr.shape == (2, k, 2, 16)
  full = tree_bytes(CacheSpec("full").init(2, 64, 2, 16, jnp.bfloat16))
  fixed = 2 * 2 * k * 2 * 16 * 2 + 2 * 2 * 2 * 16 * 4  # the open group; the f32 centres
  assert tree_bytes(c) == full // k + fixed
  assert CacheSpec("holokv", k=k).bytes_per_token(2, 16, jnp.bfloat16) == 2 * 2 * 16 * 2 / k
  # Sinks: the leading groups move from the slots to an exact buffer.
  c = CacheSpec("holokv", k=k, sinks=4).init(2, 64, 2, 16, jnp.bfloat16)
  n_x = -(-4 // k)
  assert c.ks.shape[1] == 64 // k - n_x and c.kx.shape[1] == n_x * k and c.capacity == 64


def test_writes_in_pieces_equal_one_write():
  """Prefill then token-by-token writes leave the same slots and residual."""
  x = jax.random.normal(jax.random.key(0), (1, 13, 2, 16))
  one = holokv.HoloKVCache.init(1, 16, 2, 16, jnp.float32, k=4, sinks=4).write(x, x, 0)
  parts = holokv.HoloKVCache.init(1, 16, 2, 16, jnp.float32, k=4, sinks=4).write(
      x[:, :6], x[:, :6], 0)
  for t in range(6, 13):
    parts = parts.write(x[:, t:t + 1], x[:, t:t + 1], t)
  for a, b in zip(one, parts):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(one.kr[0, 0], x[0, 12])  # the open group: position 12
  np.testing.assert_allclose(one.kx[0], x[0, :4])      # the sink group, exact


@pytest.mark.parametrize("read, center", [("joint", False), ("faithful", False),
                                          ("joint", True)])
def test_k1_reproduces_the_full_cache(tiny, read, center, decode_logits):
  """k = 1 is the full cache; centring (a fixed shift of every key and value) is exact."""
  ids = _ids((2, 20))
  full, _ = decode_logits(tiny, ids, CacheSpec("full"), 7, 32)
  one, _ = decode_logits(tiny, ids, CacheSpec("holokv", k=1, read=read, center=center), 7, 32)
  np.testing.assert_allclose(one, full, atol=2e-5)


@pytest.mark.parametrize("k, read, sinks, center", [
    (2, "joint", 0, False), (4, "joint", 4, True), (4, "faithful", 0, False),
    (2, "faithful", 4, True)])
def test_prefill_equals_decode(tiny, k, read, sinks, center, decode_logits):
  """Every prompt length (group-aligned or not) gives the decode path's logits."""
  spec = CacheSpec("holokv", k=k, read=read, sinks=sinks, center=center)
  ids = _ids((2, 18), seed=k)
  g, s = nnx.split(tiny)
  ref = _extend_all(g, s, ids, spec)
  for p in (3, 8):  # inside the sink group, group-aligned
    got, _ = decode_logits(tiny, ids, spec, p, 32)
    np.testing.assert_allclose(got[:, 1:], ref[:, p:], atol=2e-4)
    np.testing.assert_allclose(got[:, 0], ref[:, p - 1], atol=2e-4)


def test_superposition_changes_the_output(tiny):
  """k >= 2 is not the full cache (the crosstalk is real), and the reads differ."""
  ids = _ids((1, 24))
  g, s = nnx.split(tiny)
  full = _extend_all(g, s, ids, CacheSpec("full"))
  joint = _extend_all(g, s, ids, CacheSpec("holokv", k=4))
  faith = _extend_all(g, s, ids, CacheSpec("holokv", k=4, read="faithful"))
  np.testing.assert_allclose(joint[:, :4], full[:, :4], atol=2e-5)  # group 0 is exact
  assert float(jnp.abs(joint - full).max()) > 1e-3
  assert float(jnp.abs(joint - faith).max()) > 1e-3


def test_decode_does_not_recompile(tiny):
  from holojax.models import decoding  # noqa: PLC0415
  spec = CacheSpec("holokv", k=4)
  logits, cache = decoding.prefill(tiny, _ids((1, 6)), max_len=24, cache=spec)
  decoding._decode._clear_cache()
  for _ in range(3):
    toks, cache, logits = decoding.decode(tiny, cache, logits, 4)
  assert decoding._decode._cache_size() == 1
  assert cache.layers[0].ks.shape[1] == 6 - 1 and int(cache.pos) == 18  # one sink group


# --- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize("k", [0, 3, 16, 2.0, True])
def test_bad_k(k):
  with pytest.raises(ValueError, match="k="):
    CacheSpec("holokv", k=k)


def test_bad_head_dim_and_read():
  with pytest.raises(ValueError, match="head_dim=12"):
    CacheSpec("holokv", k=4).init(1, 8, 1, 12, jnp.float32)  # 6 pairs, not a multiple of 4
  with pytest.raises(ValueError, match="head_dim=7"):
    holokv.codes(2, 7)
  with pytest.raises(ValueError, match="read="):
    CacheSpec("holokv", read="elementwise")
  with pytest.raises(ValueError, match="pairing="):
    holokv.codes(2, 8, "interleaved")


def test_decode_through_the_kernel_equals_the_reference(tiny, decode_logits):
  """The Pallas slot-attention kernel (interpreted) inside the model's decode path."""
  ids = _ids((1, 12), seed=3)
  ref, _ = decode_logits(tiny, ids, CacheSpec("holokv", k=4), 5, 32)
  got, _ = decode_logits(tiny, ids, CacheSpec("holokv", k=4, implementation="interpret"), 5, 32)
  np.testing.assert_allclose(got, ref, atol=1e-4)
