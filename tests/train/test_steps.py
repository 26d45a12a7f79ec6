"""Shared training pieces of the lock-step benchmarks (train/bench/steps.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from holojax.train.bench.steps import adamw_direction, lr_at, lr_train_step


def test_lr_schedule():
  assert lr_at(0, 100, peak=1.0, warmup=10) == pytest.approx(0.1)
  assert lr_at(9, 100, peak=1.0, warmup=10) == pytest.approx(1.0)
  assert lr_at(55, 100, peak=1.0, warmup=10) == pytest.approx(0.55)
  assert lr_at(100, 100, peak=1.0, warmup=10) == pytest.approx(0.1)
  lrs = [lr_at(s, 100, peak=1.0, warmup=10) for s in range(100)]
  assert max(lrs) == 1.0 and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_lr_train_step_applies_minus_lr_times_update():
  params = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([0.5])}
  x = jnp.array([3.0, 4.0])

  def loss(p, x):
    return jnp.sum((p["w"] @ x + p["b"]) ** 2)

  tx = optax.identity()  # update = gradient
  want = jax.tree.map(lambda p, g: np.asarray(p - 0.1 * g), params,
                      jax.grad(loss)(params, x))
  want_loss = float(loss(params, x))
  step = lr_train_step(loss, tx)
  new, _, value = step(params, tx.init(params), x, jnp.float32(0.1))
  assert float(value) == pytest.approx(want_loss)
  for k in want:
    np.testing.assert_allclose(new[k], want[k], rtol=1e-6)


def test_adamw_direction_decays_only_matrices_when_asked():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  for only, b_decayed in ((True, False), (False, True)):
    tx = adamw_direction(0.5, b2=0.98, matrices_only=only)
    upd, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(upd["w"], 0.5)  # zero grads: only the decay
    assert bool(jnp.all(upd["b"] == 0.5)) == b_decayed
