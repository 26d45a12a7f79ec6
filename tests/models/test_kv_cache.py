"""KV cache kinds and the shared generate on the tiny Llama: parity with the full forward,
quantisation error, the window rule, bytes, no recompilation per token, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from holojax.models import decoding, generate
from holojax.models.kv_cache import CacheSpec, QuantCache
from holojax.models.llama import LLAMA_PRESETS, Llama
from holojax.optim.accounting import tree_bytes

TINY = LLAMA_PRESETS["llama-tiny"]


@pytest.fixture(scope="module")
def tiny():
  return Llama(TINY, rngs=nnx.Rngs(0))


def _ids(shape, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, 256, jnp.int32)


@nnx.jit(static_argnums=(2,))
def _prefill(model, ids, kind):
  cache = model.init_cache(ids.shape[0], 64, kind)
  return model.prefill(ids, cache)


@nnx.jit
def _extend(model, ids, cache):
  return model.extend(ids, cache)


def test_full_decode_equals_forward(tiny, decode_logits):
  ids = _ids((2, 20))
  want = tiny(ids)[:, 7:]
  got, cache = decode_logits(tiny, ids, "full", 8)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert int(cache.pos) == 20
  # chunked reading (extend) gives every position's logits
  c = tiny.init_cache(2, 64, "full")
  l1, c = _extend(tiny, ids[:, :5], c)
  l2, c = _extend(tiny, ids[:, 5:], c)
  np.testing.assert_allclose(jnp.concatenate([l1, l2], 1), tiny(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,tol", [("int8", 0.02), ("int4", 0.3)])
def test_quantised_decode_close_to_forward(tiny, kind, tol, decode_logits):
  # Tolerance: max |logit error| / max |logit| (int8 measures ~0.2%, int4 ~4%).
  ids = _ids((2, 40), seed=1)
  want = tiny(ids)[:, 20:]
  got, _ = decode_logits(tiny, ids, CacheSpec(kind, group=8), 21)
  err = float(jnp.abs(got - want).max() / jnp.abs(want).max())
  assert 0 < err < tol, err


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_cache_error_bound_and_chunking(bits):
  g, h, k = 8, 2, 16
  x = jax.random.normal(jax.random.key(0), (1, 37, h, k)) * jnp.arange(1, k + 1)[None, None, None]
  write = jax.jit(lambda c, x, p: c.write(x, x, p))
  one = write(QuantCache.init(1, 40, h, k, jnp.float32, bits=bits, group=g), x, 0)
  k_hat, v_hat, _ = one.read(37)
  levels = 2 ** bits - 1
  xg = x[:, :32].reshape(1, 4, g, h, k)  # the complete key groups: per channel bound
  bound = (xg.max(2) - xg.min(2)) / levels / 2 + 1e-5
  err = jnp.abs(k_hat[:, :32].reshape(1, 4, g, h, k) - xg).max(2)
  assert bool((err <= bound).all())
  np.testing.assert_array_equal(k_hat[:, 32:37], x[:, 32:])  # the residual is exact
  vb = (x.max(-1, keepdims=True) - x.min(-1, keepdims=True)) / levels / 2 + 1e-5
  assert bool((jnp.abs(v_hat[:, :37] - x) <= vb).all())
  # written in uneven chunks: the same cache
  c = QuantCache.init(1, 40, h, k, jnp.float32, bits=bits, group=g)
  p = 0
  for n in (1, 5, 9, 3, 16, 3):  # crossing group boundaries
    c = write(c, x[:, p:p + n], p)
    p += n
  for a, b in zip(c.read(37), one.read(37)):
    np.testing.assert_array_equal(a, b)


def test_window_rule(tiny, decode_logits):
  spec = CacheSpec("window", sinks=2, window=6)
  ids = _ids((1, 24), seed=3)
  step_logits, cache = decode_logits(tiny, ids, spec, 1)
  pre_logits, _ = _prefill(tiny, ids, spec)  # windowed prefill == windowed steps
  np.testing.assert_allclose(pre_logits, step_logits[:, -1], rtol=1e-5, atol=1e-5)
  # a token outside the sinks and the window does not matter; a sink does
  last = lambda x: _prefill(tiny, x, spec)[0]
  far = ids.at[:, 10].set((ids[:, 10] + 1) % 256)
  np.testing.assert_allclose(last(far), pre_logits, rtol=1e-5, atol=1e-5)
  sink = ids.at[:, 1].set((ids[:, 1] + 1) % 256)
  assert float(jnp.abs(last(sink) - pre_logits).max()) > 1e-4
  assert sorted(np.asarray(cache.layers[0].pos).tolist()) == [0, 1, *range(18, 24)]
  # a window covering everything is the full cache
  wide, _ = decode_logits(tiny, ids, CacheSpec("window", sinks=2, window=40), 1)
  full, _ = decode_logits(tiny, ids, "full", 1)
  np.testing.assert_allclose(wide, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["full", "int8", "int4", "window"])
def test_bytes_per_token(tiny, kind):
  spec = CacheSpec(kind, group=8, sinks=2, window=30)
  cache = jax.eval_shape(lambda: tiny.init_cache(1, 64, spec))
  per_layer = spec.bytes_per_token(TINY.num_kv_heads, TINY.head_dim, jnp.float32)
  slots = 32 if kind == "window" else 64
  fixed = {"full": 0, "window": 32 * 4 + 4, "int8": 8 * 32 * 4, "int4": 8 * 32 * 4}[kind]
  assert tree_bytes(cache) == TINY.num_hidden_layers * (slots * per_layer + fixed) + 4
  full = CacheSpec("full").bytes_per_token(2, 64, jnp.bfloat16)
  assert full == 512 and CacheSpec("int8").bytes_per_token(2, 64, jnp.bfloat16) < full / 1.8
  assert CacheSpec("int4").bytes_per_token(2, 64, jnp.bfloat16) < full / 3.2


def test_generate_greedy_matches_argmax_and_returns_cache(tiny):
  prompt = _ids((2, 5), seed=4)
  out, cache = generate(tiny, prompt, 6, return_cache=True)
  assert out.shape == (2, 11) and out.dtype == jnp.int32
  np.testing.assert_array_equal(out[:, :5], prompt)
  np.testing.assert_array_equal(jnp.argmax(tiny(out[:, :10]), -1)[:, 4:], out[:, 5:])
  assert int(cache.pos) == 11 and cache.layers[0].k.shape == (2, 11, 2, 16)
  sampled = generate(tiny, prompt, 3, temperature=0.8, key=jax.random.key(1), cache="int4")
  assert sampled.shape == (2, 8)
  # the halves: prefill, then decode one token at a time
  logits, c = decoding.prefill(tiny, prompt, max_len=11)
  toks = [decoding.decode(tiny, c, logits, 1)]
  for _ in range(5):
    toks.append(decoding.decode(tiny, toks[-1][1], toks[-1][2], 1))
  np.testing.assert_array_equal(jnp.concatenate([t[0] for t in toks], 1), out[:, 5:])


def test_decode_compiles_once(tiny):
  traces = []
  real_step = Llama.step

  def counted(self, ids_b, cache):
    traces.append(1)
    return real_step(self, ids_b, cache)

  spec = CacheSpec("int8", group=4)  # a spec not compiled by other tests
  with pytest.MonkeyPatch.context() as m:
    m.setattr(Llama, "step", counted)
    prompt = _ids((1, 6), seed=5)
    generate(tiny, prompt, 12, cache=spec)
    first = len(traces)
    generate(tiny, prompt + 1, 12, cache=spec)
    assert len(traces) == first <= 2  # the scan traces its body once (twice on some jax)
    logits, c = decoding.prefill(tiny, prompt, max_len=30, cache=spec)
    start = len(traces)
    for _ in range(10):
      _, c, logits = decoding.decode(tiny, c, logits, 1)
    assert len(traces) - start <= 2 and int(c.pos) == 16


def test_bad_input(tiny):
  with pytest.raises(ValueError, match=r"outside \[0, 256\): min 0, max 999"):
    generate(tiny, jnp.array([[0, 999]]), 2)
  with pytest.raises(ValueError, match=r"min -3"):
    generate(tiny, jnp.array([[-3, 1]]), 2)
  with pytest.raises(ValueError, match=r"250 tokens \+ 10 new tokens = 260.*max_seq_len=256"):
    generate(tiny, jnp.zeros((1, 250), jnp.int32), 10)
  with pytest.raises(ValueError, match="kind"):
    generate(tiny, jnp.zeros((1, 2), jnp.int32), 2, cache="int3")
  with pytest.raises(ValueError, match="key"):
    generate(tiny, jnp.zeros((1, 2), jnp.int32), 2, temperature=1.0)
  with pytest.raises(ValueError, match="window"):
    CacheSpec("window", window=0)


def test_cache_overflow_is_an_error(tiny):
  cache = tiny.init_cache(1, 8, "full")
  _, cache = tiny.extend(jnp.zeros((1, 6), jnp.int32), cache)
  with pytest.raises(ValueError, match="6 cached \\+ 3 new tokens = 9 exceed the cache's 8"):
    tiny.extend(jnp.zeros((1, 3), jnp.int32), cache)
  with pytest.raises(ValueError, match="shorter than the prompt"):
    decoding.prefill(tiny, jnp.zeros((1, 5), jnp.int32), max_len=4)
