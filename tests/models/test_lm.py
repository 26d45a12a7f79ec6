"""The shared causal-LM pieces: losses, lm_output, input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holojax.models.lm import (CausalLMOutput, causal_lm_loss, check_input_ids, lm_output,
                               next_token_loss)


def _ce(logits, targets):
  lg = np.asarray(logits, np.float64)
  lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
  return -np.take_along_axis(lp, np.asarray(targets)[..., None], -1)[..., 0]


def test_causal_lm_loss_shifts_and_skips_ignored():
  logits = jax.random.normal(jax.random.key(0), (2, 6, 5))
  labels = jax.random.randint(jax.random.key(1), (2, 6), 0, 5).at[:, :3].set(-100)
  tgt = np.asarray(labels)[:, 1:]
  mask = tgt != -100
  want = _ce(np.asarray(logits)[:, :-1], np.where(mask, tgt, 0))[mask].mean()
  np.testing.assert_allclose(causal_lm_loss(logits, labels), want, rtol=1e-5)
  assert float(causal_lm_loss(logits, jnp.full_like(labels, -100))) == 0.0
  np.testing.assert_allclose(causal_lm_loss(logits, labels.at[:, :3].set(7), ignore_index=7),
                             want, rtol=1e-5)


def test_next_token_loss_is_the_unshifted_mean():
  logits = jax.random.normal(jax.random.key(2), (2, 4, 5))
  targets = jax.random.randint(jax.random.key(3), (2, 4), 0, 5)
  np.testing.assert_allclose(next_token_loss(logits, targets), _ce(logits, targets).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(next_token_loss(logits[:, :-1], targets[:, 1:]),
                             causal_lm_loss(logits, targets), rtol=1e-6)


def test_lm_output():
  logits = jnp.zeros((1, 3, 4))
  assert lm_output(logits) is logits
  out = lm_output(logits, jnp.array([[0, 1, 2]]))
  assert isinstance(out, CausalLMOutput) and out.logits is logits
  with pytest.raises(ValueError, match="labels shape"):
    lm_output(logits, jnp.zeros((1, 2), jnp.int32))
  for bad in (-5, 4):  # neither a token id in [0, 3] nor -100
    with pytest.raises(ValueError, match=f"labels hold {bad}, neither a token id in"):
      lm_output(logits, jnp.array([[0, bad, -100]]))
  assert isinstance(lm_output(logits, jnp.array([[-100, 3, -100]])), CausalLMOutput)


def test_check_input_ids():
  ids = check_input_ids(np.zeros((2, 3), np.int32), max_seq_len=3)
  assert isinstance(ids, jax.Array) and ids.shape == (2, 3)
  with pytest.raises(ValueError, match="max_seq_len=2"):
    check_input_ids(ids, max_seq_len=2)
  with pytest.raises(ValueError, match=r"\[B, T\]"):
    check_input_ids(ids[0], max_seq_len=3)
  with pytest.raises(TypeError, match="integer"):
    check_input_ids(ids.astype(jnp.float32), max_seq_len=3)


@pytest.mark.parametrize("name", ["tiny", "holo-tiny", "phasor-tiny"])
def test_out_of_vocabulary_ids_raise_before_the_model(name):
  from flax import nnx
  from holojax.models import registry
  spec = registry.get(name)
  model = spec.build(spec.config, rngs=nnx.Rngs(0))
  for bad in ([[1, 256]], [[-1, 3]]):
    with pytest.raises(ValueError, match=r"vocabulary allows \[0, 255\]"):
      model(jnp.asarray(bad))
