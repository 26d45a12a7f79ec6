"""Every registered preset is built and called one way (the lm contract)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from holojax.models import registry
from holojax.models.lm import CausalLMOutput, causal_lm_loss, next_token_loss

# Every preset shrunk through the shared config vocabulary, so one override
# fits them all (and the gpt2-124m / *-small presets build in milliseconds).
TINY = dict(vocab_size=256, hidden_size=32, num_hidden_layers=1, num_heads=2, intermediate_size=64,
            max_seq_len=16)


def _ids(b, t, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, 256, jnp.int32)


def _tiny(name):
  """The preset shrunk by TINY (grouped-query models also get one KV head)."""
  extra = dict(num_kv_heads=1, head_dim=16) if hasattr(registry.get(name).config,
                                                       "num_kv_heads") else {}
  return registry.get(name, **TINY, **extra)


@pytest.fixture(scope="module", params=registry.names())
def built(request):
  spec = _tiny(request.param)
  return spec.config, spec.build(spec.config, rngs=nnx.Rngs(0))


def test_presets_speak_the_shared_vocabulary():
  for name in registry.names():
    cfg = registry.get(name).config
    for field in registry.VOCABULARY:
      v = getattr(cfg, field)
      assert isinstance(v, int) and not isinstance(v, bool) and v >= 1, (name, field, v)
    assert cfg.vocab_size >= 256, name  # the byte corpus' tokens fit


def test_call_returns_logits_then_output_with_labels(built):
  cfg, model = built
  ids = _ids(2, 12)
  labels = ids.at[:, :4].set(-100)
  logits = model(ids)
  assert logits.shape == (2, 12, cfg.vocab_size) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  out = model(input_ids=ids, labels=labels)
  assert isinstance(out, CausalLMOutput)
  np.testing.assert_allclose(out.logits, logits, rtol=1e-6, atol=1e-6)
  assert out.loss.shape == () and np.isfinite(float(out.loss))
  np.testing.assert_allclose(out.loss, causal_lm_loss(logits, labels), rtol=1e-6)


def test_loop_loss_equals_shifted_loss(built):
  """Causal models: the loop's next_token_loss on batch[:, :-1] equals the
  HF-shifted loss on the whole batch."""
  _, model = built
  batch = _ids(2, 13, seed=1)
  loop = next_token_loss(model(batch[:, :-1]), batch[:, 1:])
  np.testing.assert_allclose(loop, model(batch, labels=batch).loss, rtol=1e-5)


def test_bad_inputs_name_the_argument(built):
  cfg, model = built
  with pytest.raises(ValueError, match="labels"):
    model(_ids(2, 8), labels=_ids(2, 7))
  with pytest.raises(ValueError, match="max_seq_len"):
    model(_ids(1, cfg.max_seq_len + 1))
  with pytest.raises(ValueError, match="input_ids"):
    model(_ids(1, 8)[0])
  with pytest.raises(TypeError, match="integer"):
    model(jnp.zeros((1, 4), jnp.float32))


def test_register_needs_the_shared_vocabulary():
  @dataclasses.dataclass(frozen=True)
  class Old:
    vocab_size: int = 256
    max_seq_len: int = 64
    d_model: int = 32

  with pytest.raises(TypeError, match="hidden_size"):
    registry.register("old", Old(), lambda c, rngs: None)
  assert "old" not in registry.names()


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown model preset 'huge'"):
    registry.get("huge")
