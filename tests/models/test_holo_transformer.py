"""HoloForCausalLM: API, loss, recurrent decoding, MQAR learning on CPU."""

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from holojax.data.synthetic import mqar, shifted_accuracy
from holojax.models.holo_transformer import (HOLO_PRESETS, HoloConfig,
                                             HoloForCausalLM, generate)
from holojax.models.lm import causal_lm_loss

SMALL = HoloConfig(vocab_size=40, hidden_size=32, hd_dim=32,
                   num_hidden_layers=2, num_heads=4, intermediate_size=64,
                   max_seq_len=16, implementation="xla")


@pytest.fixture(scope="module")
def small_model():
  return HoloForCausalLM(SMALL, rngs=nnx.Rngs(0))


def _ids(shape, seed=0, vocab=40):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab, jnp.int32)


def test_forward_and_shifted_loss(small_model):
  model = small_model
  ids = _ids((2, 12))
  labels = ids.at[:, :5].set(-100)
  out = model(input_ids=ids, labels=labels)  # the seed's documented call
  assert out.logits.shape == (2, 12, 40) and out.logits.dtype == jnp.float32
  lg = np.asarray(out.logits, np.float64)[:, :-1]
  lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
  tgt = np.asarray(labels)[:, 1:]
  mask = tgt != -100
  ce = -np.take_along_axis(lp, np.where(mask, tgt, 0)[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.loss, ce[mask].mean(), rtol=1e-5)
  np.testing.assert_array_equal(model(ids), out.logits)
  assert float(causal_lm_loss(out.logits, jnp.full_like(ids, -100))) == 0.0


@pytest.mark.parametrize("mode,write_gate,dtype", [
    ("content", True, "float32"), ("positional", False, "float32"),
    ("content", False, "bfloat16")])
def test_recurrent_logits_equal_parallel(mode, write_gate, dtype):
  cfg = dataclasses.replace(SMALL, mode=mode, write_gate=write_gate,
                            dtype=dtype)
  model = HoloForCausalLM(cfg, rngs=nnx.Rngs(1))
  ids = _ids((2, 10), seed=1)
  logits_btv = model(ids)
  cache = model.init_cache(2)
  step = nnx.jit(lambda m, tok, c: m.step(tok, c))
  rec = []
  for t in range(10):
    lg_bv, cache = step(model, ids[:, t], cache)
    rec.append(lg_bv)
  tol = 1e-4 if dtype == "float32" else 0.1  # bf16: two rounding orders
  np.testing.assert_allclose(jnp.stack(rec, 1), logits_btv, rtol=tol,
                             atol=tol)
  assert all(c.s_re.shape == (2, 4, 8) for c in cache)  # O(hd_dim) state


@pytest.mark.parametrize("mode,window,conv,rope", [("content", 0, 0, False),
                                                   ("positional", 0, 0, False),
                                                   ("content", 4, 3, False), ("content", 4, 3, True)])
def test_parallel_prefill_equals_recurrent_steps(mode, window, conv, rope):
  cfg = dataclasses.replace(HOLO_PRESETS["tiny"], mode=mode, window=window, conv=conv,
                            window_rope=rope, max_seq_len=32)
  model = HoloForCausalLM(cfg, rngs=nnx.Rngs(3))
  for i, block in enumerate(model.blocks if window else ()):  # wake the zero-initialised window
    out = block.attn.window_attn.out.kernel
    out[...] = 0.3 * jax.random.normal(jax.random.key(i), out[...].shape)
    c = block.attn.conv_kd  # and the identity-initialised convolution
    c[...] = c[...] + 0.3 * jax.random.normal(jax.random.key(10 + i), c[...].shape)
  ids = _ids((2, 11), seed=4)
  logits_bv, cache = model.prefill(ids)
  rec = model.init_cache(2)
  for t in range(11):
    rec_bv, rec = model.step(ids[:, t], rec)
  np.testing.assert_allclose(logits_bv, rec_bv, rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(cache), jax.tree.leaves(rec)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # decoding continues identically from either cache
  nxt = ids[:, 0]
  np.testing.assert_allclose(model.step(nxt, cache)[0],
                             model.step(nxt, rec)[0], rtol=1e-4, atol=1e-4)


def test_generate_greedy_matches_parallel_argmax(small_model):
  model = small_model
  prompt = _ids((2, 4), seed=2)
  out = generate(model, prompt, 6)
  assert out.shape == (2, 10) and out.dtype == jnp.int32
  np.testing.assert_array_equal(out[:, :4], prompt)
  pred = jnp.argmax(model(out[:, :9]), -1)
  np.testing.assert_array_equal(pred[:, 3:], out[:, 4:])
  sampled = generate(model, prompt, 3, temperature=1.0, key=jax.random.key(0))
  assert sampled.shape == (2, 7)
  with pytest.raises(ValueError, match="max_seq_len"):
    generate(model, prompt, 13)
  with pytest.raises(ValueError, match="key"):
    generate(model, prompt, 2, temperature=1.0)


def test_config_presets_and_json():
  for name, cfg in HOLO_PRESETS.items():
    d = dataclasses.asdict(cfg)
    assert HoloConfig(**json.loads(json.dumps(d))) == cfg, name
  assert HOLO_PRESETS["tiny"].max_seq_len >= 128


def test_bad_input_names_the_argument(small_model):
  with pytest.raises(ValueError, match="hd_dim"):
    dataclasses.replace(SMALL, hd_dim=30)
  with pytest.raises(ValueError, match="mode"):
    dataclasses.replace(SMALL, mode="rope")
  with pytest.raises(ValueError, match="window"):
    dataclasses.replace(SMALL, window=-1)
  with pytest.raises(ValueError, match="window_rope=True needs window"):
    dataclasses.replace(SMALL, window_rope=True)
  with pytest.raises(ValueError, match="conv"):
    dataclasses.replace(SMALL, conv=-2)
  model = small_model
  with pytest.raises(ValueError, match="max_seq_len"):
    model(_ids((1, 17)))
  with pytest.raises(ValueError, match="labels"):
    model(_ids((2, 8)), labels=_ids((2, 7)))
  with pytest.raises(ValueError, match="input_ids"):
    model(_ids((8,)))


@pytest.mark.slow
def test_tiny_model_learns_mqar_on_cpu():
  """4 pairs, vocab 64, T 16 (the pairs, then the queries: half the tokens of
  T 32, the same recall): chance is 1/32; reaches ~0.98 in 120 steps."""
  cfg = HoloConfig(vocab_size=64, hidden_size=64, hd_dim=128,
                   num_hidden_layers=2, num_heads=4, intermediate_size=128,
                   max_seq_len=16, implementation="xla")
  model = HoloForCausalLM(cfg, rngs=nnx.Rngs(0))
  steps, batch, lr = 120, 64, 6e-3
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, 20, steps, lr * 0.1)
  opt = nnx.Optimizer(model, optax.adam(sched), wrt=nnx.Param)
  train = mqar(steps * batch, seq_len=16, num_pairs=4, vocab_size=64, seed=1)
  test = mqar(512, seq_len=16, num_pairs=4, vocab_size=64, seed=2)

  @nnx.jit
  def train_step(model, opt, ids, labels):
    loss, grads = nnx.value_and_grad(lambda m: m(ids, labels).loss)(model)
    opt.update(model, grads)
    return loss

  start = time.perf_counter()
  for i in range(steps):
    sl = slice(i * batch, (i + 1) * batch)
    train_step(model, opt, jnp.asarray(train.input_ids[sl]),
               jnp.asarray(train.labels[sl]))
  logits = nnx.jit(lambda m, x: m(x))(
      model, jnp.asarray(test.input_ids))
  acc = shifted_accuracy(logits, test.labels)
  print(f"MQAR accuracy {acc:.3f} after {steps} steps, "
        f"{time.perf_counter() - start:.1f}s")
  assert acc > 0.9, acc


def test_config_kernel_backend_and_tiles_reach_the_layers():
  """``implementation`` (the kernel vocabulary) and ``blocks`` survive JSON
  and reach every layer's phasor memory."""
  from holojax.kernels.phasor import PhasorBlocks  # noqa: PLC0415
  blocks = PhasorBlocks(block_t=16, chunks=1, block_d=4)
  cfg = dataclasses.replace(SMALL, implementation=["interpret", "xla"], blocks=blocks)
  assert cfg.implementation == ("interpret", "xla")
  assert HoloConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
  model = HoloForCausalLM(cfg, rngs=nnx.Rngs(0))
  assert model.blocks[0].attn.blocks == blocks
  ids = _ids((1, 12))
  ref = HoloForCausalLM(SMALL, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(model(ids), ref(ids), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="implementation"):
    dataclasses.replace(SMALL, implementation="cuda")
  with pytest.raises(ValueError, match="blocks"):
    dataclasses.replace(SMALL, blocks=(16, 2))
