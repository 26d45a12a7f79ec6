"""HoloAdam's flat tree layout (``tree_layout="flat"``): one stacked state and one
sketch per group of equally shaped tensors.

Flat and leaf layouts use the same keys (they depend on chunk and head only),
so they compute the same maths; the program of the flat layout does not grow
with the number of tensors. The optax contract runs for the flat layout in
test_contract.py (``holo_adam[flat]``).
"""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import holojax.optim.holo as ha
from holojax.optim import holo_adam
from tests.optim import contract
from tests.optim.test_holo import _reference_step


def _tree():
  """Equal shapes (one group), a 3-D tensor, another row length, dense leaves, bf16."""
  ks = jax.random.split(jax.random.key(0), 7)
  return {"a": jax.random.normal(ks[0], (16, 256)), "b": jax.random.normal(ks[1], (16, 256)),
          "c": jax.random.normal(ks[2], (4, 8, 300)), "e": jax.random.normal(ks[3], (32, 100)),
          "d": jax.random.normal(ks[4], (10,)), "s": jnp.float32(1.0),
          "h": jax.random.normal(ks[5], (16, 256), jnp.bfloat16),
          "emb": jax.random.normal(ks[6], (512, 8))}


def _trajectory(tree_layout, steps=4, **kw):
  opt = holo_adam(1e-2, weight_decay=0.0, min_compress_size=1000, warmup_steps=3,
                  tree_layout=tree_layout, **kw)
  p = _tree()
  s = opt.init(p)
  upd = jax.jit(opt.update)
  us = []
  for i in range(steps):
    g = jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1)), p)
    u, s = upd(g, s, p)
    us.append(u)
    p = jax.tree.map(lambda a, b: a + b, p, u)
  return us, s


@pytest.mark.parametrize("kw", [{}, dict(faithful=True), dict(exact_grad=False)], ids=str)
def test_flat_equals_leaf(kw):
  """Same keys, same maths: the updates agree to float rounding at every step
  (the gate's per-tensor rms is a reduction over a stacked axis)."""
  leaf, _ = _trajectory("leaf", **kw)
  flat, _ = _trajectory("flat", **kw)
  for t, (ul, uf) in enumerate(zip(leaf, flat)):
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ul)[0], jax.tree.leaves(uf)):
      assert a.dtype == b.dtype and a.shape == b.shape, path
      tol = 1e-2 if a.dtype == jnp.bfloat16 else 1e-5
      np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32),
                                 rtol=tol, atol=tol * 1e-2, err_msg=f"step {t} {path}")


def test_group_update_equals_leaf_updates():
  """The batched group update on stacked gradients equals the per-tensor updates."""
  layout = ha.HoloLayout(holo_ratio=8, heads=3)
  ks = jax.random.split(jax.random.key(1), 3)
  g = jax.random.normal(ks[0], (3, 6, 200))
  hm = jax.lax.complex(jax.random.normal(ks[1], (18, 3, 25)),
                       jax.random.normal(ks[2], (18, 3, 25)))
  rms = jnp.abs(jax.random.normal(ks[1], (18, 7)))
  kw = dict(layout=layout, b1=0.9, b2=0.999, eps=1e-8, rf=jnp.float32(0.3))
  u, hm2, rms2 = ha._group_update(g, hm, rms, jnp.uint32(5), jnp.int32(3), **kw)
  for j in range(3):
    rows = slice(6 * j, 6 * j + 6)
    ul, hml, rmsl = ha._leaf_update(g[j], hm[rows], rms[rows], jnp.uint32(5), jnp.int32(3), **kw)
    np.testing.assert_allclose(np.asarray(u[j]), np.asarray(ul), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(hm2[rows]), np.asarray(hml), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rms2[rows]), np.asarray(rmsl), rtol=1e-6)


def test_flat_ratio1_one_head_is_adam_with_block_v():
  """Two stacked tensors at ratio 1, one head: each follows the NumPy reference
  of Adam with a block-mean v and the gate (its rms per tensor, not per group)."""
  kw = dict(b1=0.9, b2=0.99, eps=1e-8, resonance_factor=0.4, warmup_steps=3)
  opt = ha.scale_by_holo_adam(holo_ratio=1, heads=1, v_block_size=32, min_compress_size=0,
                              compress=True, tree_layout="flat", **kw)
  shape = (50, 41)  # rows of 41: a partial last v block
  s = opt.init({"a": jnp.zeros(shape), "b": jnp.zeros(shape)})
  assert [x.shape for x in s.mu] == [(0,), (100, 1, 41)]
  ref = {k: (np.zeros(shape), np.zeros((50, 2))) for k in "ab"}
  upd = jax.jit(opt.update)
  for t in range(1, 7):
    g = {k: jax.random.normal(jax.random.key(10 * t + i), shape) * (1 + t) * (1 + 9 * i)
         for i, k in enumerate("ab")}
    u, s = upd(g, s)
    for k in "ab":
      want, *ref[k] = _reference_step(np.asarray(g[k]), *ref[k], t, b1=0.9, b2=0.99, eps=1e-8,
                                      vb=32, rf_max=0.4, warmup=3)
      np.testing.assert_allclose(np.asarray(u[k]), want, rtol=2e-4, atol=1e-5)


def test_flat_state_is_stacked_per_shape_group():
  _, s = _trajectory("flat", steps=1)
  st = s.inner_state[0]
  # dense: d (10) + s (1) + emb (4096, embedding-like); groups [16, 256] x3, [32, 300], [32, 100].
  assert [x.shape for x in st.mu] == [(4107,), (48, 4, 13), (32, 4, 15), (32, 4, 5)]
  assert [x.shape for x in st.nu] == [(4107,), (48, 8), (32, 10), (32, 4)]
  assert st.mu[0].dtype == jnp.float32 and all(x.dtype == jnp.complex64 for x in st.mu[1:])


# Per-leaf data movement (stacking the gradients, splitting the updates).
MOVES = {"slice", "concatenate", "reshape", "bitcast", "pad", "copy", "parameter", "tuple",
         "get-tuple-element", "constant", "fusion", "broadcast-in-dim", "convert"}


def _ops(text: str) -> collections.Counter:
  """Op names of a lowered (StableHLO) or compiled (HLO) module's text, every
  computation's instructions (fused computations' too)."""
  if text.startswith("module"):
    found = re.findall(r"= \"?(?:stablehlo|chlo)\.([a-z_]+)", text)
  else:
    found = re.findall(r"^\s*(?:ROOT )?%\S+ = .*? ([a-z][a-z0-9\-]*)\(", text, re.M)
  return collections.Counter(x.replace("_", "-") for x in found)


def _update(n, rows, tree_layout):
  """The jitted update of ``n`` compressed [rows, 256] leaves and ``n`` dense ones."""
  p = {f"w{i:03d}": jnp.zeros((rows, 256)) for i in range(n)}
  p.update({f"b{i:03d}": jnp.zeros((256,)) for i in range(n)})
  opt = ha.scale_by_holo_adam(min_compress_size=1024, tree_layout=tree_layout)
  return jax.jit(opt.update).lower(p, jax.eval_shape(opt.init, p), p)


def _compute(ops: collections.Counter) -> int:
  return sum(v for k, v in ops.items() if k not in MOVES)


def test_program_size_does_not_grow_with_the_number_of_leaves():
  """10 vs 80 leaves of the same total size: the flat program's compute ops
  are the same before XLA and in the compiled module (only per-leaf stacking,
  slicing and output fusions are added); the leaf layout's grow ~8x."""
  small, big = _update(10, 64, "flat"), _update(80, 8, "flat")
  assert _compute(_ops(big.as_text())) == _compute(_ops(small.as_text()))
  cs, cb = _ops(small.compile().as_text()), _ops(big.compile().as_text())
  assert cs["fft"] > 0 and _compute(cb) == _compute(cs), (cs, cb)
  leaf_small = _ops(_update(10, 64, "leaf").as_text())
  leaf_big = _ops(_update(80, 8, "leaf").as_text())
  assert leaf_big["cosine"] >= 6 * leaf_small["cosine"] > 0  # codebook keys per leaf
  assert _compute(leaf_big) >= 6 * _compute(leaf_small)


@pytest.mark.parametrize("value, err", [("flatt", ValueError), ("Leaf", ValueError),
                                        (1, TypeError), (None, TypeError)])
def test_bad_tree_layout(value, err):
  with pytest.raises(err, match="tree_layout"):
    holo_adam(1e-3, tree_layout=value)
  with pytest.raises(err, match="tree_layout"):
    ha.scale_by_holo_adam(tree_layout=value)


def test_flat_rejects_a_mismatched_tree():
  opt = ha.scale_by_holo_adam(min_compress_size=1024, tree_layout="flat")
  s = opt.init({"w": jnp.zeros((64, 128))})
  g = {"w": jnp.zeros((32, 128))}
  with pytest.raises(ValueError, match="tree_layout='flat'"):
    opt.update(g, s)


def test_flat_runs_under_explicit_sharding():
  """FSDP-sharded parameters (contract.fsdp_params): init and a jitted update
  give updates sharded like the parameters and a state of unchanged types
  (tests/optim/test_holo_flat_sharded.py checks the numbers and the HLO)."""
  mesh = contract.explicit_mesh()
  with jax.set_mesh(mesh):
    params = contract.fsdp_params(mesh)
    opt = holo_adam(1e-2, min_compress_size=1024, tree_layout="flat")
    state = opt.init(params)
    u, state2 = jax.jit(opt.update)(jax.tree.map(jnp.ones_like, params), state, params)
  assert [jax.typeof(x) for x in jax.tree.leaves(state2)] == [
      jax.typeof(x) for x in jax.tree.leaves(state)]
  for k in params:
    assert jax.typeof(u[k]).sharding.spec == jax.typeof(params[k]).sharding.spec, k


def test_bench_names_the_flat_layout():
  from holojax.train.bench.common import parse_optimizer_spec
  from holojax.train.bench.optim import optimizer_step as ob
  assert parse_optimizer_spec("holo_adam:flat") == ("holo_adam", "", "flat")
  assert parse_optimizer_spec("turbo_adam@triton:flat") == ("turbo_adam", "triton", "flat")
  assert ob.labels("holo_adam:flat")["tree_layout"] == "flat"
  opt = ob.make_optimizer("holo_adam:flat")
  assert isinstance(opt.init({"w": jnp.zeros((64, 128))}).inner_state[0].mu, tuple)
  with pytest.raises(ValueError, match="optimizers"):
    ob.OptimizerStepConfig(optimizers=("nope:flat",))


def test_flat_under_inject_hyperparams():
  from holojax.optim import HOLO_ADAM_STATIC_ARGS
  assert "tree_layout" in HOLO_ADAM_STATIC_ARGS
  contract.check_inject_hyperparams(
      holo_adam, dict(learning_rate=1e-2, b2=0.99, min_compress_size=1024, warmup_steps=2,
                      tree_layout="flat"), static_args=HOLO_ADAM_STATIC_ARGS)
