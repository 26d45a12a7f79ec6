"""Phasor memory: binding, the causal memory, capacity theory, the layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from holojax.nn import phasor as ph


def _naive_memory(v, k, q, scale):
  """float64 O(T^2) y_t = sum_{s<=t} v_s cos(k_s - q_t) c_t."""
  v, k, q = (np.asarray(a, np.float64) for a in (v, k, q))
  t = v.shape[1]
  y = np.zeros_like(v)
  for i in range(t):
    y[:, i] = np.sum(v[:, :i + 1] * np.cos(k[:, :i + 1] - q[:, i:i + 1]), 1)
    if scale == "sqrt_t":
      y[:, i] /= np.sqrt(i + 1.0)
  return y


def _inputs(shape, seed=0):
  kv, kk, kq = jax.random.split(jax.random.key(seed), 3)
  v = jax.random.normal(kv, shape)
  k = jax.random.uniform(kk, shape, minval=-np.pi, maxval=np.pi)
  q = jax.random.uniform(kq, shape, minval=-np.pi, maxval=np.pi)
  return v, k, q


def test_generate_random_phasors():
  th = ph.generate_random_phasors(jax.random.key(0), 64, 256)
  assert th.shape == (64, 256) and th.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(th))) <= np.pi
  sim = jnp.cos(th[:, None, :] - th[None, :, :]).mean(-1)  # codes' similarity
  off = np.asarray(sim)[~np.eye(64, dtype=bool)]
  assert abs(off.mean()) < 0.01 and off.std() < 2.0 / np.sqrt(2 * 256)
  nrm = ph.generate_random_phasors(jax.random.key(0), 2, 3,
                                   distribution="normal", scale=10.0)
  assert float(jnp.std(nrm)) > 1.0
  with pytest.raises(ValueError, match="distribution"):
    ph.generate_random_phasors(jax.random.key(0), 2, 3, distribution="cauchy")


def test_bind_unbind_round_trip():
  v = jax.random.normal(jax.random.key(1), (1000,))
  th = ph.generate_random_phasors(jax.random.key(2), 1, 1000)[0]
  m = ph.bind(v, th)
  assert m.dtype == jnp.complex64
  np.testing.assert_allclose(jnp.abs(m), jnp.abs(v), rtol=1e-6)  # unitary
  back = ph.unbind(m, th)
  np.testing.assert_allclose(back.real, v, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(back.imag, 0.0, atol=1e-6)


def test_positional_phases_exact_at_long_range():
  freq_d = ph.generate_random_phasors(jax.random.key(3), 1, 16)[0]
  t = np.array([0, 1, 7, 4096, 131071])
  got = np.asarray(ph.positional_phases(freq_d, jnp.asarray(t)))
  one = 1 << 24
  frac = np.mod(np.asarray(freq_d, np.float32) / np.float32(2 * np.pi), 1.0)
  cyc = np.round(frac * one).astype(np.int64) % one
  want = 2 * np.pi * ((t[:, None] * cyc[None, :]) % one) / one
  np.testing.assert_allclose(got, want, atol=1e-6)
  near = np.asarray(freq_d)[None, :] * t[:3, None]
  np.testing.assert_allclose(np.cos(got[:3]), np.cos(near), atol=1e-5)


@pytest.mark.parametrize("scale", ["sqrt_t", "none"])
def test_memory_matches_naive(scale):
  v, k, q = _inputs((2, 33, 3, 4))
  y = ph.phasor_memory(v, k, q, scale=scale, implementation="xla")
  np.testing.assert_allclose(y, _naive_memory(v, k, q, scale), rtol=1e-4,
                             atol=1e-4)


def test_memory_bf16_storage_fp32_accumulation():
  v, k, q = _inputs((1, 512, 2, 8), seed=4)
  v16 = v.astype(jnp.bfloat16)
  y16 = ph.phasor_memory(v16, k, q, implementation="xla")
  assert y16.dtype == jnp.bfloat16
  want = _naive_memory(v16.astype(jnp.float32), k, q, "sqrt_t")
  # Only the final rounding to bf16 remains (rel 2^-8), no swamping.
  np.testing.assert_allclose(np.asarray(y16, np.float32), want, rtol=1e-2,
                             atol=2e-2)


def test_memory_bad_args():
  v, k, q = _inputs((1, 4, 1, 2))
  with pytest.raises(ValueError, match="k_theta"):
    ph.phasor_memory(v, k[:, :3], q)
  with pytest.raises(ValueError, match="scale"):
    ph.phasor_memory(v, k, q, scale="t")
  with pytest.raises(ValueError, match="implementation"):
    ph.phasor_memory(v, k, q, implementation="cuda")
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="cannot run here"):
      ph.phasor_memory(v, k, q, implementation="pallas")


def _recall_accuracy(key, n, d, m, reps):
  """Store n (phasor key, codebook value) pairs, retrieve by inner product."""
  kk, kc, ki = jax.random.split(key, 3)
  keys_rnd = ph.generate_random_phasors(kk, reps * n, d).reshape(reps, n, d)
  code_md = jnp.sign(jax.random.normal(kc, (m, d)))
  idx_rn = jax.random.randint(ki, (reps, n), 0, m)
  mem_rd = ph.bind(code_md[idx_rn], keys_rnd).sum(axis=1)
  y_rnd = ph.unbind(mem_rd[:, None, :], keys_rnd).real
  score_rnm = jnp.einsum("rnd,md->rnm", y_rnd, code_md)
  return float(jnp.mean(jnp.argmax(score_rnm, -1) == idx_rn))


@pytest.mark.parametrize("n", [64, 128, 256, 512])
def test_raw_recall_follows_capacity_formula(n):
  d, m = 512, 64
  acc = _recall_accuracy(jax.random.key(n), n, d, m, reps=4096 // n)
  p = ph.recall_probability(n, d, m)
  assert abs(acc - p) < 0.03, (n, acc, p)


def test_recall_probability_limits():
  assert ph.recall_probability(1, 4096, 4096) > 0.999
  assert abs(ph.recall_probability(1e9, 1, 10) - 0.1) < 1e-3  # chance
  # SPEC: ~19 N complex dims for 99% at M = 4096.
  assert 0.985 < ph.recall_probability(100, 1900, 4096) < 0.995


@pytest.mark.parametrize("mode,write_gate,window,conv,rope", [("content", False, 0, 0, False),
                                                              ("content", True, 0, 0, False),
                                                              ("positional", False, 0, 0, False),
                                                              ("content", True, 3, 0, False),
                                                              ("content", False, 0, 4, False),
                                                              ("content", True, 3, 4, False),
                                                              ("content", True, 3, 4, True)])
def test_layer_recurrent_equals_parallel(mode, write_gate, window, conv, rope):
  layer = ph.PhasorAttention(16, 2, 8, mode=mode, write_gate=write_gate, window=window,
                             window_rope=rope, conv=conv, max_seq_len=32, rngs=nnx.Rngs(0))
  if window:  # its output projection starts at zero: give it something to say
    layer.window_attn.out.kernel[...] = jax.random.normal(jax.random.key(6), (16, 16))
  if conv:  # and the convolution starts as the identity
    layer.conv_kd[...] = jax.random.normal(jax.random.key(7), (conv, 16))
  x_btd = jax.random.normal(jax.random.key(5), (2, 9, 16))
  y_btd = layer(x_btd)
  cache = layer.init_cache(2)
  assert cache.s_re is not cache.s_im  # separate buffers: donatable
  step = nnx.jit(lambda m, x, c: m.step(x, c))
  ys = []
  for t in range(9):
    y_bd, cache = step(layer, x_btd[:, t], cache)
    ys.append(y_bd)
  np.testing.assert_allclose(jnp.stack(ys, 1), y_btd, rtol=1e-5, atol=1e-5)
  assert int(cache.pos) == 9 and cache.s_re.shape == (2, 2, 4)


def test_layer_pallas_path_equals_xla_path_with_gradients():
  """Content layer (positions as in-kernel frequencies): kernel == reference,
  including the gradient of the learned positional bandwidth."""
  x_btd = jax.random.normal(jax.random.key(6), (2, 20, 16))
  blocks = ph.PhasorBlocks(block_t=16, chunks=1, block_d=2)  # 2 segments
  layers = {impl: ph.PhasorAttention(16, 2, 8, implementation=impl,
                                     pos_bandwidth_init=0.0, blocks=blocks,
                                     rngs=nnx.Rngs(0))
            for impl in ("xla", "interpret")}

  def loss(layer):
    return jnp.sum(layer(x_btd) ** 2)

  out = {i: nnx.value_and_grad(loss)(m) for i, m in layers.items()}
  np.testing.assert_allclose(out["interpret"][0], out["xla"][0], rtol=1e-5)
  g_p, g_x = (nnx.to_flat_state(out[i][1]) for i in ("interpret", "xla"))
  for (path, a), (_, b) in zip(g_p, g_x):
    np.testing.assert_allclose(a[...], b[...], rtol=1e-4, atol=1e-5,
                               err_msg=str(path))
  assert np.abs(out["xla"][1]["pos_bandwidth"][...]).max() > 0


def test_layer_frequencies_are_not_params():
  layer = ph.PhasorAttention(8, 2, 4, rngs=nnx.Rngs(0))
  params = nnx.state(layer, nnx.Param)
  names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
  assert "freq" not in names and "q_proj.kernel" in names
  assert isinstance(layer.freq, ph.PhasorFrequencies)


def test_layer_bad_input():
  with pytest.raises(ValueError, match="hd_dim"):
    ph.PhasorAttention(8, 3, 8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="mode"):
    ph.PhasorAttention(8, 2, 8, mode="rope", rngs=nnx.Rngs(0))
  layer = ph.PhasorAttention(8, 2, 8, max_seq_len=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_seq_len"):
    layer(jnp.ones((1, 5, 8)))
  with pytest.raises(ValueError, match="x must be"):
    layer(jnp.ones((1, 4, 7)))
