import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from holojax.models import GPT, GPT_PRESETS, GPTConfig

TINY = GPT_PRESETS["tiny"]


def _params(model):
  return nnx.state(model, nnx.Param)


def test_forward_shape_and_param_count():
  model = GPT(TINY, rngs=nnx.Rngs(0))
  logits = model(jnp.zeros((2, 16), jnp.int32))
  assert logits.shape == (2, 16, 256) and logits.dtype == jnp.float32
  n = sum(x.size for x in jax.tree.leaves(_params(model)))
  assert n == TINY.num_params()


def test_gpt2_124m_tree_has_124m_params():
  cfg = GPT_PRESETS["gpt2-124m"]
  abstract = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree.leaves(_params(abstract)))
  assert n == cfg.num_params() and 123e6 < n < 125e6


def test_causal():
  model = GPT(TINY, rngs=nnx.Rngs(1))
  x = jax.random.randint(jax.random.key(0), (1, 12), 0, 256)
  y = x.at[0, 8].set((x[0, 8] + 1) % 256)
  a, b = model(x), model(y)
  np.testing.assert_allclose(a[0, :8], b[0, :8], atol=1e-6)
  assert not np.allclose(a[0, 8:], b[0, 8:])


def test_bf16_compute_keeps_fp32_params():
  cfg = dataclasses.replace(TINY, dtype="bfloat16")
  model = GPT(cfg, rngs=nnx.Rngs(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(_params(model)))
  ref = GPT(TINY, rngs=nnx.Rngs(0))
  x = jnp.arange(16, dtype=jnp.int32)[None]
  out, want = model(x), ref(x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, want, atol=0.1)


def test_sequence_longer_than_max_is_an_error():
  model = GPT(TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_seq_len"):
    model(jnp.zeros((1, TINY.max_seq_len + 1), jnp.int32))


@pytest.mark.parametrize("kw,match", [
    ({"hidden_size": 30, "num_heads": 4}, "multiple of num_heads"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"intermediate_size": 0}, "intermediate_size"),
    ({"dtype": "float16"}, "dtype"),
    ({"attention": "flash"}, "attention"),
])
def test_bad_config(kw, match):
  with pytest.raises(ValueError, match=match):
    GPTConfig(**kw)
