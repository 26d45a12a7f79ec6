"""The one train step (train/step.py): state, update, donation, sharding, host lr."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from holojax.train import sharding
from holojax.train.step import (host_lr, init_state, make_eval_step, make_train_step,
                                model_of, schedule_values, train_step, with_learning_rate)


def _model():
  return nnx.Linear(8, 4, rngs=nnx.Rngs(0))


def _loss(model, batch):
  x_bd, y_bd = batch
  return jnp.mean((model(x_bd) - y_bd) ** 2)


def _batch():
  k1, k2 = jax.random.split(jax.random.key(1))
  return jax.random.normal(k1, (16, 8)), jax.random.normal(k2, (16, 4))


def test_step_is_value_and_grad_then_optax_update():
  tx = optax.adamw(1e-2, weight_decay=0.1)
  graphdef, state = init_state(_model, tx)
  params = nnx.state(_model(), nnx.Param).to_pure_dict()
  batch = _batch()

  def pure_loss(p):
    model = _model()
    nnx.update(model, nnx.State(p))
    return _loss(model, batch)

  loss, g = jax.value_and_grad(pure_loss)(params)
  upd, _ = tx.update(g, tx.init(params), params)
  want = optax.apply_updates(params, upd)
  state, metrics = make_train_step(graphdef, tx, _loss)(state, batch)
  got = nnx.state(model_of(graphdef, state), nnx.Param).to_pure_dict()
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert float(metrics["train/loss"]) == pytest.approx(float(loss))
  assert float(metrics["train/grad_norm"]) == pytest.approx(float(optax.tree.norm(g)), rel=1e-5)


def test_state_is_donated_and_eval_step_reads_the_model():
  tx = optax.sgd(0.1)
  graphdef, state = init_state(_model, tx)
  step = make_train_step(graphdef, tx, _loss)
  old = jax.tree.leaves(state["model"])[0]
  state, _ = step(state, _batch())
  assert old.is_deleted()
  eval_step = make_eval_step(graphdef, _loss)
  assert float(eval_step(state, _batch())) == pytest.approx(
      float(_loss(model_of(graphdef, state), _batch())))


def test_sharded_at_creation_on_a_mesh():
  mesh = sharding.make_mesh(2, 4)
  tx = optax.adam(1e-3)
  graphdef, state = init_state(_model, tx, mesh)
  kernel = state["model"]["kernel"][...]
  assert "fsdp" in str(kernel.sharding.spec)
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  step = make_train_step(graphdef, tx, _loss, mesh=mesh, state_sharding=state_sh)
  state, metrics = step(state, _batch())
  assert state["model"]["kernel"][...].sharding == kernel.sharding
  assert metrics["train/loss"].sharding.is_fully_replicated


def test_host_lr_changes_without_recompiling():
  tx = host_lr(optax.sgd)
  graphdef, state = init_state(_model, tx)
  step = make_train_step(graphdef, tx, _loss)
  before = np.asarray(state["model"]["kernel"][...])  # a copy: the state is donated
  g = nnx.grad(_loss)(model_of(graphdef, state), _batch()).to_pure_dict()
  state, _ = step(with_learning_rate(state, 0.0), _batch())
  state, _ = step(with_learning_rate(state, 0.5), _batch())
  assert step._cache_size() == 1
  after = nnx.state(model_of(graphdef, state), nnx.Param).to_pure_dict()
  np.testing.assert_allclose(after["kernel"], before - 0.5 * g["kernel"],
                             rtol=1e-6)


def test_train_step_scans():
  tx = optax.adam(1e-2)
  graphdef, state = init_state(_model, tx)
  step = train_step(graphdef, tx, _loss)
  batch = _batch()
  _, loss_s = jax.jit(lambda s: jax.lax.scan(
      lambda s, _: (lambda s, m: (s, m["train/loss"]))(*step(s, batch)), s, None,
      length=20))(state)
  assert loss_s.shape == (20,) and loss_s[-1] < loss_s[0]


def test_schedule_values():
  sched = optax.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100, 0.1)
  vals = schedule_values(sched, 101)
  assert vals.dtype == np.float32 and vals[10] == 1.0
  np.testing.assert_allclose(vals, [float(sched(i)) for i in range(101)], rtol=1e-6)
