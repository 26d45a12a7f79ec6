"""TurboAdam on scanned models: ``scanned`` stacks of layers updated layer by layer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import holojax.optim.turbo as ta
from holojax.kernels import quant
from holojax.optim import TURBO_ADAM_STATIC_ARGS, turbo_adam
from tests.optim import contract

L, R, C = 3, 64, 256
SCALES = jnp.array([1.0, 1e-3, 10.0])[:, None, None]  # pooled statistics would differ


def stack(key=0):
  return jax.random.normal(jax.random.key(key), (L, R, C)) * SCALES


def layer(tree, j):
  return jax.tree.map(lambda x: x[j], tree)


@pytest.mark.parametrize("kw", [{}, dict(compress_m=False), dict(faithful=True)])
def test_each_layer_is_updated_as_its_own_tensor(kw):
  """Layer j of the stack gets exactly the per-tensor update of that layer
  alone, with its own statistics and the seed fold_in(fold_in(step key, leaf), j)."""
  g = {"w": stack()}
  opt = ta.scale_by_turbo_adam(scanned=True, **kw)
  state = opt.init(g)
  stacked = state.m.alpha["w"] if kw.get("compress_m", True) else state.mu["w"]
  assert stacked.shape[0] == L
  u, new = jax.jit(opt.update)(g, state)
  _, sub = jax.random.split(jax.random.wrap_key_data(state.key))
  hyper = dict(layout=ta.TurboAdamLayout(**kw), impl="xla",
               b1=0.9, b2=0.999, eps=1e-8, null_pct=0.1, amp_pct=0.9)
  for j in range(L):
    seed = quant.seed_from_key(jax.random.fold_in(jax.random.fold_in(sub, 0), j))
    s = layer((state.mu["w"], state.nu["w"], (state.v.codes["w"], state.v.bounds["w"]),
               ta._MLeaf(*[f["w"] for f in state.m])), j)
    want = ta._leaf_update(g["w"][j], *s, seed, jnp.int32(1), **hyper)
    got = (u["w"][j], *layer((new.mu["w"], new.nu["w"], (new.v.codes["w"], new.v.bounds["w"]),
                              ta._MLeaf(*[f["w"] for f in new.m])), j))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_temporaries_are_one_layers():
  """The compiled update's scratch memory (gradients and state donated, as in
  a train step) is about one layer's, not the stack's."""
  g = {"w": jnp.ones((8, 128, 1024))}

  def temp(scanned):
    opt = turbo_adam(1e-3, scanned=scanned)
    step = jax.jit(lambda g, s, p: opt.update(g, s, p), donate_argnums=(0, 1))
    return step.lower(g, opt.init(g), g).compile().memory_analysis().temp_size_in_bytes

  whole, layered = temp(None), temp(True)
  print(f"temp bytes: stack as one tensor {whole}, layer by layer {layered}")
  assert layered < 0.5 * whole


def test_prefix_callable_inject_hyperparams_and_chain():
  params = {"blocks": {"w": stack()}, "head": jnp.ones((64, 256))}
  pick = lambda p: {"blocks": True, "head": False}
  opt = optax.inject_hyperparams(turbo_adam, static_args=TURBO_ADAM_STATIC_ARGS)(
      learning_rate=1e-3, scanned=pick)
  chained = optax.chain(optax.clip_by_global_norm(1.0), turbo_adam(1e-3, scanned=pick))
  for tx in (opt, chained):
    state = tx.init(params)
    u, state = jax.jit(tx.update)(params, state, params)
    assert jax.tree.map(jnp.shape, u) == jax.tree.map(jnp.shape, params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


def test_bad_input():
  with pytest.raises(ValueError, match="scanned"):
    ta.scale_by_turbo_adam(scanned=True, tree_layout="flat")
  opt = ta.scale_by_turbo_adam(scanned=True)
  state = opt.init({"w": stack()})
  with pytest.raises(ValueError, match=r"\['w'\]"):
    opt.update({"w": jnp.ones((L + 1, R, C))}, state)
  with pytest.raises(ValueError, match=r"\['w'\]"):
    opt.update({"w": jnp.ones((L, R, C))}, ta.scale_by_turbo_adam().init({"w": stack()}))


def test_layers_axis_sharded_is_refused_inner_axes_work():
  mesh = contract.explicit_mesh()
  P = jax.sharding.PartitionSpec
  with jax.set_mesh(mesh):
    axis = mesh.axis_names[0]
    inner = {"w": jax.device_put(jnp.ones((2, 64, 256)),
                                 jax.sharding.NamedSharding(mesh, P(None, axis, None)))}
    opt = turbo_adam(1e-3, scanned=True)
    u, _ = jax.jit(opt.update)(inner, opt.init(inner), inner)
    assert jax.typeof(u["w"]).sharding.spec == P(None, axis, None)
    across = {"w": jax.device_put(jnp.ones((8, 64, 256)),
                                  jax.sharding.NamedSharding(mesh, P(axis, None, None)))}
    with pytest.raises(ValueError, match=r"\['w'\] is sharded .* across its layers"):
      opt.init(across)
