"""Swapping a Llama's projections for HOLO / low-rank layers (holojax.models.convert)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from holojax.models.convert import (ConvertSpec, convert, input_grams, param_count, stored_bytes,
                                    trainable)
from holojax.models.llama import LLAMA_PRESETS, Llama
from holojax.models.lora import add_lora
from holojax.nn.holo import HoloLinear, LowRankLinear, holo_param_count

TINY = LLAMA_PRESETS["llama-tiny"]
IDS = jnp.arange(24, dtype=jnp.int32).reshape(2, 12) * 7 % 256


def _tiny(seed=0):
  return Llama(TINY, rngs=nnx.Rngs(seed))


def _kernel(layer) -> np.ndarray:
  """[in, out] kernel of a converted layer, in float64."""
  if isinstance(layer, HoloLinear):
    return np.asarray(layer.dense_kernel(), np.float64)
  return np.asarray(layer.u_ir[...], np.float64) @ np.asarray(layer.v_ro[...], np.float64)


@pytest.mark.parametrize("kind", ["holo", "lowrank"])
def test_pretrained_layer_reproduced_to_its_reported_error(smollm2, kind):
  model, _ = smollm2
  block = model.layers[3]
  k_before = {n: np.asarray(getattr(block, n).kernel[...], np.float64)
              for n in ("k_proj", "down_proj")}
  one = Llama(dataclasses.replace(model.config, num_hidden_layers=1), rngs=nnx.Rngs(0))
  nnx.update(one.layers[0], nnx.clone(nnx.state(block)))
  one, fits = convert(one, ConvertSpec(kind, targets=("k_proj", "down_proj"), harmonics=64))
  x = np.random.default_rng(0).normal(size=(3, 1536)).astype(np.float32)
  for fit in fits:
    name = fit.layer.split(".")[-1]
    k_new = _kernel(getattr(one.layers[0], name))
    err = np.linalg.norm(k_new - k_before[name]) / np.linalg.norm(k_before[name])
    assert abs(err - fit.rel_err) < 1e-4, (fit, err)
    assert 0.05 < fit.rel_err < 1.0  # lossy, and better than nothing
    layer = getattr(one.layers[0], name)
    xi = x[:, :layer.in_features]
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(xi))), xi @ k_new, rtol=2e-3,
                               atol=2e-3)
  holo_err = {f.layer: f.rel_err for f in fits}
  if kind == "holo":  # a random 64-dim row space of R^576 keeps ~64/576 of the energy
    assert abs(holo_err["layers[0].k_proj"] - np.sqrt(1 - 64 / 576)) < 0.02


def test_full_rank_lowrank_reproduces_the_model():
  model = _tiny()
  want = model(IDS)
  conv, fits = convert(nnx.clone(model), ConvertSpec("lowrank", ("k_proj", "v_proj"), rank=32))
  assert max(f.rel_err for f in fits) < 1e-6
  np.testing.assert_allclose(np.asarray(conv(IDS)), np.asarray(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("targets,names", [
    ("all", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    ("mlp", ("gate_proj", "up_proj", "down_proj"))])
def test_parameter_count_and_bytes_match_the_formula(targets, names):
  model = _tiny()
  before = param_count(model)
  h = 8
  conv, fits = convert(model, ConvertSpec("holo", targets=targets, harmonics=h))
  assert len(fits) == TINY.num_hidden_layers * len(names)
  dense = sum(f.in_features * f.out_features for f in fits)
  holo = sum(holo_param_count(f.in_features, f.out_features, h) for f in fits)
  assert param_count(conv) == before - dense + holo == TINY.num_params() - dense + holo
  basis = sum(h * f.in_features for f in fits)
  assert stored_bytes(conv) == 4 * (param_count(conv) + basis)
  for block in conv.layers:
    for n in names:
      assert isinstance(getattr(block, n), HoloLinear)
  if targets == "mlp":
    assert isinstance(conv.layers[0].q_proj, nnx.Linear)


def test_fresh_swap_transfers_nothing_and_shares_one_seed():
  model = _tiny()
  conv, fits = convert(nnx.clone(model), ConvertSpec("holo-fresh", targets="mlp", harmonics=8))
  assert min(f.rel_err for f in fits) > 0.9
  a, b = conv.layers[0].gate_proj, conv.layers[1].gate_proj
  np.testing.assert_array_equal(np.asarray(a.basis_hi[...]), np.asarray(b.basis_hi[...]))
  np.testing.assert_array_equal(np.asarray(a.phase_oh[...]), np.asarray(b.phase_oh[...]))
  lsq, _ = convert(nnx.clone(model), ConvertSpec("holo", targets="mlp", harmonics=8))
  assert not np.array_equal(np.asarray(lsq.layers[0].gate_proj.basis_hi[...]),
                            np.asarray(lsq.layers[1].gate_proj.basis_hi[...]))


def test_distillation_trains_only_converted_coefficients_never_the_basis():
  spec = ConvertSpec("holo", targets="mlp", harmonics=8)
  conv, _ = convert(_tiny(), spec)
  before = nnx.clone(nnx.state(conv))
  opt = nnx.Optimizer(conv, optax.adam(1e-2), wrt=trainable(spec))

  @nnx.jit
  def step(m, opt, ids):
    loss, g = nnx.value_and_grad(lambda m: m(ids, labels=ids).loss,
                                 argnums=nnx.DiffState(0, trainable(spec)))(m)
    opt.update(m, g)
    return loss

  step(conv, opt, IDS)
  flat_before = jax.tree_util.tree_flatten_with_path(before)[0]
  changed = {jax.tree_util.keystr(p) for (p, a), b in zip(flat_before,
                                                          jax.tree.leaves(nnx.state(conv)))
             if not np.array_equal(a, b)}
  assert changed and all("amp_oh" in c for c in changed), changed  # cos(0)'s phase grad is 0
  assert all(("gate_proj" in c or "up_proj" in c or "down_proj" in c) for c in changed)


def test_converted_layers_keep_the_model_dtype():
  cfg = dataclasses.replace(TINY, dtype="bfloat16", param_dtype="bfloat16")
  conv, _ = convert(Llama(cfg, rngs=nnx.Rngs(0)), ConvertSpec("lowrank", "all", harmonics=8))
  assert {x.dtype for x in jax.tree.leaves(nnx.state(conv))} == {jnp.dtype(jnp.bfloat16)}
  assert conv(IDS).dtype == jnp.float32


@pytest.mark.parametrize("spec,match", [
    (dict(kind="holo", harmonics=33), r"layers\[0\]\.k_proj \(64 -> 32\).*harmonics=33"),
    (dict(kind="lowrank", rank=40), r"layers\[0\]\.k_proj.*rank=40"),
])
def test_harmonics_above_the_rank_limit_name_the_layer(spec, match):
  model = _tiny()
  before = nnx.clone(nnx.state(model))
  with pytest.raises(ValueError, match=match):
    convert(model, ConvertSpec(**spec))
  assert isinstance(model.layers[0].q_proj, nnx.Linear)  # nothing swapped
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model), before)


def test_layers_that_cannot_be_converted_are_named():
  model = add_lora(_tiny(), 2, ("v_proj",), rngs=nnx.Rngs(1))
  with pytest.raises(ValueError, match=r"layers\[0\]\.v_proj is LoRA, not an nnx.Linear"):
    convert(model, ConvertSpec("holo", "attn", harmonics=4))
  conv, _ = convert(_tiny(), ConvertSpec("holo", "mlp", harmonics=4))
  with pytest.raises(ValueError, match=r"layers\[0\]\.gate_proj is HoloLinear"):
    convert(conv, ConvertSpec("lowrank", "mlp", harmonics=4))
  with pytest.raises(ValueError, match="targets"):
    ConvertSpec("holo", targets=("input_norm",))
  with pytest.raises(ValueError, match="kind"):
    ConvertSpec("svd")
  with pytest.raises(ValueError, match="harmonics"):
    ConvertSpec("holo", harmonics=0)
  with pytest.raises(ValueError, match="rank"):
    ConvertSpec("holo", rank=4)
  with pytest.raises(ValueError, match="calibrated"):
    ConvertSpec("holo-fresh", calibrated=True)


def test_input_grams_are_the_inputs_gram_matrices_and_leave_the_model_as_it_was():
  model = _tiny()
  ids = np.asarray(IDS).reshape(1, 2, 12)
  want = model(IDS)
  grams = input_grams(model, ids, ("q_proj", "down_proj"))
  assert isinstance(model.layers[0].q_proj, nnx.Linear)
  np.testing.assert_array_equal(np.asarray(model(IDS)), np.asarray(want))
  x = model.embed(IDS)  # block 0's q_proj reads input_norm(embeddings)
  h = np.asarray(model.layers[0].input_norm(x), np.float64).reshape(-1, TINY.hidden_size)
  np.testing.assert_allclose(grams["layers[0].q_proj"], h.T @ h, rtol=1e-4, atol=1e-4)
  assert grams["layers[1].down_proj"].shape == (TINY.intermediate_size,) * 2


@pytest.mark.parametrize("kind", ["holo", "lowrank"])
def test_calibrated_fit_is_optimal_for_the_outputs(kind):
  model = _tiny()
  rng = np.random.default_rng(0)
  # Inputs confined to a few directions: a calibrated fit only needs those.
  grams = input_grams(model, rng.integers(0, 256, (2, 2, 16)).astype(np.int32))
  plain, fits = convert(nnx.clone(model), ConvertSpec(kind, "mlp", harmonics=8), grams)
  cal, cfits = convert(nnx.clone(model), ConvertSpec(kind, "mlp", harmonics=8, calibrated=True),
                       grams)
  for f, c in zip(fits, cfits):
    assert c.out_err < f.out_err, (f, c)
    assert f.rel_err <= c.rel_err + 1e-6  # the plain fit is the best for the weights
  # The output error is what it says: ||X (K' - K)|| / ||X K|| on the calibration inputs.
  c = cfits[0]
  g = grams[c.layer]
  k = np.asarray(model.layers[0].gate_proj.kernel[...], np.float64)
  d = _kernel(cal.layers[0].gate_proj) - k
  assert abs(np.sqrt(np.trace(d.T @ g @ d) / np.trace(k.T @ g @ k)) - c.out_err) < 1e-4
  with pytest.raises(ValueError, match=r"layers\[0\]\.gate_proj has no calibration"):
    convert(nnx.clone(model), ConvertSpec(kind, "mlp", harmonics=8, calibrated=True))
