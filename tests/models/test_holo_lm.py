"""HoloLM: the contract the training loop relies on."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from holojax.models import HOLO_LM_PRESETS, HoloLM, HoloLMConfig

BLOCKS = ["holo", "hybrid", "lowrank"]


@pytest.fixture(scope="module", params=BLOCKS)
def tiny(request):
  cfg = HOLO_LM_PRESETS[f"{request.param}-tiny"]
  return cfg, HoloLM(cfg, rngs=nnx.Rngs(0))


def _fwd(model, tok):
  return nnx.jit(lambda m, t: m(t))(model, tok)


def test_forward_shape_dtype_and_causality(tiny):
  cfg, model = tiny
  tok_bt = jax.random.randint(jax.random.key(0), (2, 12), 0, cfg.vocab_size)
  logits = _fwd(model, tok_bt)
  assert logits.shape == (2, 12, cfg.vocab_size)
  assert logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  t = 7
  tok2 = tok_bt.at[:, t].set((tok_bt[:, t] + 1) % cfg.vocab_size)
  logits2 = _fwd(model, tok2)
  np.testing.assert_allclose(np.asarray(logits)[:, :t],
                             np.asarray(logits2)[:, :t], atol=1e-5)
  assert not np.allclose(np.asarray(logits)[:, t:], np.asarray(logits2)[:, t:])


def test_max_seq_len_and_dtype_errors(tiny):
  cfg, model = tiny
  # Checks run at trace time, so abstract evaluation (no compile) suffices.
  call = lambda shape, dtype=jnp.int32: nnx.eval_shape(
    lambda m, t: m(t), model, jax.ShapeDtypeStruct(shape, dtype))
  out = call((1, cfg.max_seq_len))  # T == max is fine
  assert out.shape == (1, cfg.max_seq_len, cfg.vocab_size)
  with pytest.raises(ValueError, match="max_seq_len"):
    call((1, cfg.max_seq_len + 1))
  with pytest.raises(ValueError, match="max_seq_len"):
    model(jnp.zeros((1, cfg.max_seq_len + 1), jnp.int32))
  with pytest.raises(TypeError, match="integer"):
    call((1, 4), jnp.float32)
  with pytest.raises(ValueError, match=r"\[B, T\]"):
    call((4,))


def test_presets_are_frozen_json_able_configs():
  for block in BLOCKS:
    for size in ("tiny", "small"):
      cfg = HOLO_LM_PRESETS[f"{block}-{size}"]
      assert cfg.block == block and cfg.vocab_size == 256
      d = json.loads(json.dumps(dataclasses.asdict(cfg)))
      assert HoloLMConfig(**d) == cfg
      with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 1


@pytest.mark.parametrize("kw,name", [
  ({"block": "dense"}, "block"), ({"hidden_size": 30, "num_heads": 4}, "num_heads"),
  ({"harmonics": 0}, "harmonics"), ({"max_seq_len": 0}, "max_seq_len"),
  ({"rank": 0, "block": "lowrank"}, "rank"),
  ({"num_hidden_layers": 1.5}, "num_hidden_layers"),
  ({"intermediate_size": 100}, "intermediate_size"),
])
def test_bad_config_raises(kw, name):
  with pytest.raises(ValueError, match=name):
    HoloLMConfig(**kw)


def test_hybrid_tiny_learns_a_repeated_pattern():
  cfg = HOLO_LM_PRESETS["hybrid-tiny"]
  model = HoloLM(cfg, rngs=nnx.Rngs(1))
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  tok_bt = jnp.tile(jnp.arange(8, dtype=jnp.int32) * 7, (4, 4))  # [4, 32]

  @nnx.jit
  def step(model, opt, tok_bt):
    def loss_fn(m):
      logits = m(tok_bt[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(
        logits, tok_bt[:, 1:]).mean()
    loss, g = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, g)
    return loss

  losses = [float(step(model, opt, tok_bt)) for _ in range(30)]
  assert losses[0] > 4.0            # about log(256) at init
  assert losses[-1] < 0.5 * losses[0], losses
