"""HOLO layers: closed form, fixed basis, accounting, projection, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from holojax.nn import (
  DenseAttention, HoloAttention, HoloBasis, HoloLinear, HoloTransformerBlock,
  HybridHoloBlock, LowRankLinear, LowRankTransformerBlock, SineActivation,
  equal_param_rank, holo_basis, holo_basis_count, holo_param_count,
  lowrank_param_count)
from holojax.optim.accounting import num_params


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("use_bias", [False, True])
def test_holo_linear_equals_closed_form(use_bias):
  layer = HoloLinear(7, 5, 3, use_bias=use_bias, basis_seed=4,
                     rngs=nnx.Rngs(1))
  if use_bias:
    layer.bias_o[...] = jnp.arange(5, dtype=jnp.float32)
  x_bi = _x((2, 6, 7))
  b_hi = np.asarray(layer.basis_hi[...], np.float64)
  a_oh = np.asarray(layer.amp_oh[...], np.float64)
  p_oh = np.asarray(layer.phase_oh[...], np.float64)
  want = np.asarray(x_bi, np.float64) @ b_hi.T @ (a_oh * np.cos(p_oh)).T
  if use_bias:
    want = want + np.arange(5)
  np.testing.assert_allclose(np.asarray(layer(x_bi)), want, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(layer.dense_kernel()),
                             ((a_oh * np.cos(p_oh)) @ b_hi).T, rtol=1e-5,
                             atol=1e-6)


def test_basis_is_seeded_unit_rows_and_not_a_param():
  layer = HoloLinear(9, 4, 6, basis_seed=3, rngs=nnx.Rngs(0))
  assert isinstance(layer.basis_hi, HoloBasis)
  assert not isinstance(layer.basis_hi, nnx.Param)
  b_hi = np.asarray(layer.basis_hi[...])
  np.testing.assert_allclose(np.linalg.norm(b_hi, axis=1), 1.0, rtol=1e-5)
  # Regenerable from the seed, independent of the parameter rngs.
  other = HoloLinear(9, 4, 6, basis_seed=3, rngs=nnx.Rngs(99))
  np.testing.assert_array_equal(np.asarray(other.basis_hi[...]), b_hi)
  np.testing.assert_array_equal(np.asarray(holo_basis(6, 9, 3)), b_hi)
  assert not np.allclose(np.asarray(holo_basis(6, 9, 4)), b_hi)


def test_basis_gets_no_gradient_and_no_optimizer_state():
  model = nnx.Sequential(HoloLinear(7, 5, 3, rngs=nnx.Rngs(0)),
                         SineActivation(),
                         HoloLinear(5, 2, 3, basis_seed=1, rngs=nnx.Rngs(1)))
  basis_shapes = {(3, 7), (3, 5)}
  x_bi = _x((4, 7))

  def loss_fn(m):
    return jnp.sum(m(x_bi) ** 2)

  grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))(model)
  grad_shapes = {a.shape for a in jax.tree.leaves(grads)}
  assert grad_shapes == {(5, 3), (2, 3)}
  assert not grad_shapes & basis_shapes
  assert "basis_hi" not in str(jax.tree_util.tree_structure(grads))

  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  state_shapes = {a.shape for a in jax.tree.leaves(nnx.state(opt.opt_state))}
  assert not state_shapes & basis_shapes
  assert state_shapes == {(), (5, 3), (2, 3)}

  basis0 = np.asarray(model.layers[0].basis_hi[...])
  phase0 = np.asarray(model.layers[0].phase_oh[...])
  opt.update(model, grads)
  np.testing.assert_array_equal(np.asarray(model.layers[0].basis_hi[...]),
                                basis0)
  assert not np.allclose(np.asarray(model.layers[0].phase_oh[...]), phase0)


@pytest.mark.parametrize("d_in,d_out,h,bias",
                         [(7, 5, 3, False), (16, 64, 8, True), (2, 1, 16, False)])
def test_param_counts_match_formula(d_in, d_out, h, bias):
  layer = HoloLinear(d_in, d_out, h, use_bias=bias, rngs=nnx.Rngs(0))
  assert num_params(layer) == holo_param_count(d_in, d_out, h, use_bias=bias)
  assert num_params(layer) == 2 * d_out * h + (d_out if bias else 0)
  assert layer.basis_hi[...].size == holo_basis_count(d_in, h) == h * d_in
  r = equal_param_rank(d_in, d_out, h)
  low = LowRankLinear(d_in, d_out, r, use_bias=bias, rngs=nnx.Rngs(0))
  assert num_params(low) == lowrank_param_count(d_in, d_out, r, use_bias=bias)
  assert lowrank_param_count(d_in, d_out, r) <= max(
    holo_param_count(d_in, d_out, h), d_in + d_out)


def test_seed_table_numbers_recomputed():
  # The seed README's 32H column says 8,192 and 49,152; the layer has more.
  assert holo_param_count(784, 256, 32) == 16_384
  assert holo_param_count(512, 2048, 32) == 131_072
  assert holo_param_count(4096, 4096, 32) == 262_144
  assert equal_param_rank(4096, 4096, 32) == 32


def test_from_dense_exact_in_span_and_lossy_otherwise():
  d_in, d_out, h = 32, 12, 8
  b_hi = np.asarray(holo_basis(h, d_in, seed=5), np.float64)
  c_oh = np.random.default_rng(0).normal(size=(d_out, h))
  k_io = (c_oh @ b_hi).T
  layer, err = HoloLinear.from_dense(k_io, h, basis_seed=5, rngs=nnx.Rngs(0))
  assert err < 1e-5
  x_bi = _x((3, d_in))
  np.testing.assert_allclose(np.asarray(layer(x_bi)),
                             np.asarray(x_bi, np.float64) @ k_io, rtol=1e-4,
                             atol=1e-5)
  # A random kernel is far from an 8-dim subspace of R^32 (expected ~0.87).
  k_rand = np.random.default_rng(1).normal(size=(d_in, d_out))
  _, err_rand = HoloLinear.from_dense(k_rand, h, basis_seed=5,
                                      rngs=nnx.Rngs(0))
  assert 0.5 < err_rand < 1.0
  # The wrong basis seed loses the span.
  _, err_seed = HoloLinear.from_dense(k_io, h, basis_seed=6, rngs=nnx.Rngs(0))
  assert err_seed > 0.5


def test_from_dense_copies_bias_and_is_optimal():
  k_io = np.random.default_rng(2).normal(size=(10, 4)).astype(np.float32)
  b_o = np.arange(4, dtype=np.float32)
  layer, err = HoloLinear.from_dense(k_io, 3, bias=b_o, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(layer.bias_o[...]), b_o)
  # Least squares: perturbing the coefficients can only increase the error.
  w_oi = k_io.T.astype(np.float64)
  b_hi = np.asarray(layer.basis_hi[...], np.float64)
  c_oh = np.asarray(layer.coeff_oh, np.float64)
  base = np.linalg.norm(c_oh @ b_hi - w_oi) / np.linalg.norm(w_oi)
  assert abs(base - err) < 1e-5
  bumped = c_oh + 1e-2 * np.random.default_rng(3).normal(size=c_oh.shape)
  assert np.linalg.norm(bumped @ b_hi - w_oi) / np.linalg.norm(w_oi) > base


def test_lowrank_from_dense_is_the_truncated_svd():
  k_io = np.random.default_rng(4).normal(size=(12, 7))
  layer, err = LowRankLinear.from_dense(k_io, 3, bias=np.ones(7), rngs=nnx.Rngs(0))
  s = np.linalg.svd(k_io, compute_uv=False)
  assert abs(err - np.sqrt(np.sum(s[3:] ** 2) / np.sum(s ** 2))) < 1e-6
  k_new = np.asarray(layer.u_ir[...], np.float64) @ np.asarray(layer.v_ro[...], np.float64)
  assert abs(np.linalg.norm(k_new - k_io) / np.linalg.norm(k_io) - err) < 1e-5
  assert np.linalg.matrix_rank(k_new, tol=1e-4) == 3
  np.testing.assert_allclose(np.asarray(layer(_x((2, 12)))),
                             np.asarray(_x((2, 12)), np.float64) @ k_new + 1, rtol=1e-4, atol=1e-4)
  full, err_full = LowRankLinear.from_dense(k_io, 7, rngs=nnx.Rngs(0))  # full rank: exact
  assert err_full < 1e-6
  with pytest.raises(ValueError, match="rank=8 exceeds min"):
    LowRankLinear.from_dense(k_io, 8, rngs=nnx.Rngs(0))


def test_lowrank_linear_and_sine():
  low = LowRankLinear(6, 4, 2, use_bias=True, rngs=nnx.Rngs(0))
  x_bi = _x((3, 6))
  want = (np.asarray(x_bi) @ np.asarray(low.u_ir[...])
          @ np.asarray(low.v_ro[...]))
  np.testing.assert_allclose(np.asarray(low(x_bi)), want, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(SineActivation(3.0)(x_bi)),
                             np.sin(3.0 * np.asarray(x_bi)), rtol=1e-6)


def _ref_attention(att, x_btd, causal):
  q, k, v = (np.asarray(p(x_btd), np.float64) for p in (att.q, att.k, att.v))
  b, t, d = q.shape
  n, hd = att.heads, d // att.heads
  q, k, v = (a.reshape(b, t, n, hd) for a in (q, k, v))
  s_bnts = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(hd)
  if causal:
    s_bnts = np.where(np.tril(np.ones((t, t), bool)), s_bnts, -np.inf)
  p_bnts = np.exp(s_bnts - s_bnts.max(-1, keepdims=True))
  p_bnts /= p_bnts.sum(-1, keepdims=True)
  o = np.einsum("bnts,bsnh->btnh", p_bnts, v).reshape(b, t, d)
  return np.asarray(att.o(jnp.asarray(o, jnp.float32)))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_reference_and_causality(causal):
  att = HoloAttention(16, 4, 8, causal=causal, rngs=nnx.Rngs(0))
  x_btd = _x((2, 5, 16))
  np.testing.assert_allclose(np.asarray(att(x_btd)),
                             _ref_attention(att, x_btd, causal), rtol=1e-4,
                             atol=1e-5)
  x2 = x_btd.at[:, -1].add(1.0)
  same_past = np.allclose(np.asarray(att(x_btd))[:, :-1],
                          np.asarray(att(x2))[:, :-1], atol=1e-6)
  assert same_past == causal
  dense = DenseAttention(16, 4, causal=causal, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(dense(x_btd)),
                             _ref_attention(dense, x_btd, causal), rtol=1e-4,
                             atol=1e-5)


def test_holo_attention_projections_use_distinct_bases():
  att = HoloAttention(16, 4, 8, basis_seed=10, rngs=nnx.Rngs(0))
  bases = [np.asarray(p.basis_hi[...]) for p in (att.q, att.k, att.v, att.o)]
  assert not any(np.allclose(bases[i], bases[j])
                 for i in range(4) for j in range(i + 1, 4))


@pytest.mark.parametrize("make", [
  lambda: HoloTransformerBlock(16, 4, 8, rngs=nnx.Rngs(0)),
  lambda: HybridHoloBlock(16, 4, 8, rngs=nnx.Rngs(0)),
  lambda: LowRankTransformerBlock(16, 4, harmonics=8, rngs=nnx.Rngs(0)),
])
def test_blocks_shape_causal_and_trainable(make):
  blk = make()
  x_btd = _x((2, 6, 16))
  fwd = nnx.jit(lambda m, x: m(x))
  y_btd = fwd(blk, x_btd)
  assert y_btd.shape == x_btd.shape and y_btd.dtype == jnp.float32
  y2 = fwd(blk, x_btd.at[:, -1].add(1.0))
  np.testing.assert_allclose(np.asarray(y_btd)[:, :-1],
                             np.asarray(y2)[:, :-1], atol=1e-6)
  assert not np.allclose(np.asarray(y_btd)[:, -1], np.asarray(y2)[:, -1])
  grads = nnx.jit(nnx.grad(lambda m, x: jnp.mean(m(x) ** 2)))(blk, x_btd)
  g_leaves = jax.tree.leaves(grads)
  assert g_leaves and all(np.isfinite(np.asarray(g)).all() for g in g_leaves)


def test_hybrid_block_attention_is_dense_mlp_is_holo():
  blk = HybridHoloBlock(16, 4, 8, rngs=nnx.Rngs(0))
  assert isinstance(blk.attn.q, nnx.Linear)
  assert isinstance(blk.fc1, HoloLinear) and isinstance(blk.fc2, HoloLinear)
  assert blk.fc1.out_features == 64


@pytest.mark.parametrize("make,name", [
  (lambda: HoloLinear(4, 4, 0, rngs=nnx.Rngs(0)), "harmonics"),
  (lambda: HoloLinear(0, 4, 2, rngs=nnx.Rngs(0)), "in_features"),
  (lambda: HoloLinear(4, -1, 2, rngs=nnx.Rngs(0)), "out_features"),
  (lambda: HoloLinear(4, 4, 2, init="bogus", rngs=nnx.Rngs(0)), "init"),
  (lambda: LowRankLinear(4, 4, 0, rngs=nnx.Rngs(0)), "rank"),
  (lambda: HoloAttention(10, 3, 4, rngs=nnx.Rngs(0)), "heads"),
  (lambda: HoloAttention(0, 1, 4, rngs=nnx.Rngs(0)), "dim"),
  (lambda: HoloAttention(8, 2, 0, rngs=nnx.Rngs(0)), "harmonics"),
  (lambda: HoloTransformerBlock(12, 5, 4, rngs=nnx.Rngs(0)), "heads"),
  (lambda: HybridHoloBlock(8, 2, 0, rngs=nnx.Rngs(0)), "harmonics"),
  (lambda: SineActivation(0.0), "omega"),
  (lambda: HoloLinear.from_dense(np.ones(4), 2, rngs=nnx.Rngs(0)),
   "kernel_io"),
])
def test_bad_construction_raises_value_error(make, name):
  with pytest.raises(ValueError, match=name):
    make()


def test_bad_call_inputs():
  layer = HoloLinear(4, 3, 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="x must have last dim 4"):
    layer(jnp.ones((2, 5)))
  with pytest.raises(TypeError, match="float"):
    layer(jnp.ones((2, 4), jnp.int32))
  with pytest.raises(TypeError, match="float"):
    LowRankLinear(4, 3, 2, rngs=nnx.Rngs(0))(np.ones((2, 4), np.int64))
  with pytest.raises(TypeError, match="float"):
    SineActivation()(jnp.arange(3))
  att = HoloAttention(8, 2, 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="last dim 8"):
    att(jnp.ones((1, 3, 6)))
  with pytest.raises(ValueError, match=r"\[B, T, 8\]"):
    att(jnp.ones((3, 8)))
  with pytest.raises(TypeError, match="kernel_io must be float"):
    HoloLinear.from_dense(np.ones((4, 3), np.int32), 2, rngs=nnx.Rngs(0))


def test_holo_linear_under_jit_and_bf16():
  layer = HoloLinear(8, 4, 3, rngs=nnx.Rngs(0))
  x_bi = _x((5, 8))
  y = nnx.jit(lambda m, x: m(x))(layer, x_bi)
  np.testing.assert_allclose(np.asarray(y), np.asarray(layer(x_bi)),
                             rtol=1e-5, atol=1e-6)
  assert layer(x_bi.astype(jnp.bfloat16)).dtype == jnp.bfloat16
