"""Llama: config validation, the model contract, bad input, the GGUF loader's pieces."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from holojax.models import registry
from holojax.models.llama import LLAMA_PRESETS, Llama, LlamaConfig
from holojax.models import pretrained

TINY = LLAMA_PRESETS["llama-tiny"]


@pytest.fixture(scope="module")
def tiny():
  return Llama(TINY, rngs=nnx.Rngs(0))


def _ids(shape, seed=0, vocab=256):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab, jnp.int32)


def test_contract_logits_and_loss(tiny):
  ids = _ids((2, 12))
  logits = tiny(ids)
  assert logits.shape == (2, 12, 256) and logits.dtype == jnp.float32
  out = tiny(ids, labels=ids)
  np.testing.assert_array_equal(out.logits, logits)
  lp = jax.nn.log_softmax(logits[:, :-1])
  want = -jnp.take_along_axis(lp, ids[:, 1:, None], -1).mean()
  np.testing.assert_allclose(out.loss, want, rtol=1e-5)


def test_causal(tiny):
  ids = _ids((1, 10))
  changed = ids.at[:, 7].set((ids[:, 7] + 1) % 256)
  np.testing.assert_allclose(tiny(ids)[:, :7], tiny(changed)[:, :7], rtol=1e-5, atol=1e-5)


def test_bf16_close_to_f32():
  m32 = Llama(TINY, rngs=nnx.Rngs(1))
  m16 = Llama(dataclasses.replace(TINY, dtype="bfloat16"), rngs=nnx.Rngs(1))
  ids = _ids((1, 16), seed=2)
  np.testing.assert_allclose(m16(ids), m32(ids), atol=0.1)


def test_bad_input(tiny):
  with pytest.raises(ValueError, match=r"ids in \[1, 256\]; the vocabulary allows \[0, 255\]"):
    tiny(jnp.array([[1, 256]]))
  with pytest.raises(ValueError, match=r"ids in \[-1, 3\]"):
    tiny(jnp.array([[-1, 3]]))
  with pytest.raises(ValueError, match="T=300 exceeds the model's max_seq_len=256"):
    tiny(jnp.zeros((1, 300), jnp.int32))
  with pytest.raises(ValueError, match="labels shape"):
    tiny(jnp.zeros((1, 4), jnp.int32), labels=jnp.zeros((1, 5), jnp.int32))
  jax.jit(lambda m, x: m(x).sum())(tiny, jnp.array([[1, 2]]))  # traced ids: shape check only


def test_config_validation():
  with pytest.raises(ValueError, match="num_kv_heads"):
    LlamaConfig(num_heads=9, num_kv_heads=2)
  with pytest.raises(ValueError, match="head_dim"):
    LlamaConfig(head_dim=63)
  with pytest.raises(ValueError, match="dtype"):
    LlamaConfig(dtype="float16")
  assert LLAMA_PRESETS["smollm2-135m-instruct"].num_params() == 134_515_008
  with pytest.raises(TypeError, match="remat"):
    LlamaConfig(remat=1)


@pytest.mark.parametrize("name,billions", [("llama-1b", 1.236), ("llama-13b", 13.016)])
def test_large_presets_count_their_parameters(name, billions):
  cfg = LLAMA_PRESETS[name]
  model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))  # shapes only
  from holojax.optim.accounting import num_params
  assert num_params(model) == cfg.num_params() and round(cfg.num_params() / 1e9, 3) == billions


def test_flops_per_token_matches_the_gpt_formula_where_they_agree():
  """A tied Llama without GQA is GPT's 6 N_matmul + 12 L T D; an untied table is a lookup."""
  cfg = LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=3, num_heads=4,
                    num_kv_heads=4, head_dim=16, intermediate_size=96)
  n_matmul = 3 * (4 * 64 * 64 + 3 * 64 * 96) + 1000 * 64
  assert cfg.flops_per_token(128) == 6 * n_matmul + 12 * 3 * 128 * 64
  untied = dataclasses.replace(cfg, tie_embeddings=False)
  assert untied.num_params() == cfg.num_params() + 1000 * 64
  assert untied.flops_per_token(128) == cfg.flops_per_token(128)  # the head, not the lookup


def test_remat_gives_the_same_gradients(tiny):
  ids = jax.random.randint(jax.random.key(0), (2, 16), 0, TINY.vocab_size)
  grad = nnx.jit(lambda m, x: nnx.grad(lambda m: m(x, labels=x).loss)(m))
  grads = lambda cfg: grad(Llama(cfg, rngs=nnx.Rngs(0)), ids)
  a, b = grads(TINY), grads(dataclasses.replace(TINY, remat=True))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def _scanned_copy(model, **kw):
  """A ``scan_layers=True`` model holding ``model``'s weights (its layers stacked)."""
  scanned = Llama(dataclasses.replace(model.config, scan_layers=True, **kw), rngs=nnx.Rngs(1))
  p = nnx.state(model, nnx.Param).to_pure_dict()
  per_layer = p.pop("layers")
  layers = [per_layer[i] for i in range(model.config.num_hidden_layers)]
  state = nnx.state(scanned, nnx.Param)
  state.replace_by_pure_dict({**p, "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)})
  nnx.update(scanned, state)
  return scanned


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_layers_equal_the_loop(tiny, remat):
  """scan_layers stacks the blocks (one leaf per weight, axis 0 = layers) and
  gives the per-layer model's loss and gradients."""
  scanned = _scanned_copy(tiny, remat=remat)
  shapes = jax.tree.map(jnp.shape, nnx.state(scanned, nnx.Param).to_pure_dict())
  assert shapes["blocks"]["q_proj"]["kernel"][0] == TINY.num_hidden_layers
  ids = _ids((2, 16))
  loss_grad = nnx.jit(lambda m, x: nnx.value_and_grad(lambda m: m(x, labels=x).loss)(m))
  (la, ga), (lb, gb) = loss_grad(tiny, ids), loss_grad(scanned, ids)
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  ga = ga.to_pure_dict()
  want = jax.tree.map(lambda *xs: jnp.stack(xs),
                      *[ga["layers"][i] for i in range(TINY.num_hidden_layers)])
  for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(gb.to_pure_dict()["blocks"])):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_scanned_model_trains_but_does_not_decode():
  model = Llama(dataclasses.replace(TINY, scan_layers=True), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="scan_layers"):
    model.init_cache(1, 16)
  with pytest.raises(TypeError, match="scan_layers"):
    LlamaConfig(scan_layers=1)


def test_registry_presets():
  spec = registry.get("llama-tiny")
  assert spec.build is Llama and spec.config == TINY
  cfg = registry.get("smollm2-135m-instruct").config
  assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
  model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
  from holojax.optim.accounting import num_params
  assert num_params(model) == cfg.num_params()


def test_unpermute_rope_inverts_llama_cpp():
  # llama.cpp's converter: w.reshape(H, 2, K/2, D).swapaxes(1, 2).reshape(w.shape)
  w = np.random.default_rng(0).normal(size=(3 * 8, 5))
  permuted = w.reshape(3, 2, 4, 5).swapaxes(1, 2).reshape(w.shape)
  np.testing.assert_array_equal(pretrained.unpermute_rope(permuted, 3), w)


def test_missing_file_names_the_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="holojax fetch smollm2"):
    pretrained.find_gguf(path=tmp_path)
  with pytest.raises(ValueError, match="unknown pretrained"):
    pretrained.find_gguf("gpt-5")


def test_fetch_uses_the_cache_and_the_cli_names_it(tmp_path, capsys):
  from holojax.train import cli
  target = tmp_path / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
  target.parent.mkdir()
  target.write_bytes(b"GGUF")  # already there: no download
  assert pretrained.fetch("smollm2", cache_dir=tmp_path) == target
  assert pretrained.find_gguf(cache_dir=tmp_path) == target
  assert cli.main(["fetch", "smollm2", "--cache-dir", str(tmp_path)]) == 0
  assert str(target) in capsys.readouterr().out
  with pytest.raises(ValueError, match="unknown model"):
    pretrained.fetch("llama-70b", cache_dir=tmp_path)
