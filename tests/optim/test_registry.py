import jax
import jax.numpy as jnp
import optax
import pytest

from holojax.optim import registry, state_bits_per_param, tree_bytes


def test_builtin_optimizers_are_registered():
  assert {"adamw", "adafactor", "lion"} <= set(registry.names())
  params = {"w": jnp.ones((4, 3))}
  for name in ("adamw", "adafactor", "lion"):
    tx = registry.get(name, 1e-2, 0.0)
    updates, _ = tx.update({"w": jnp.ones((4, 3))}, tx.init(params), params)
    assert updates["w"].shape == (4, 3)
    assert float(jnp.abs(updates["w"]).sum()) > 0


def test_unknown_optimizer_lists_choices():
  with pytest.raises(ValueError, match=r"unknown optimizer 'sgdx'.*adamw"):
    registry.get("sgdx", 1e-3)


def test_register_refuses_silent_overwrite():
  with pytest.raises(ValueError, match="already registered"):
    registry.register("adamw", lambda lr, wd: optax.sgd(lr))


def test_state_bits_per_param_counts_real_bytes():
  params = {"a": jnp.zeros((1000,)), "b": jnp.zeros((10, 100), jnp.bfloat16)}
  state = jax.eval_shape(optax.adam(1e-3).init, params)
  # mu and nu follow the params' dtypes: (4000 + 2000) * 2 bytes + int32 count.
  assert tree_bytes(state) == 2 * (4000 + 2000) + 4
  assert state_bits_per_param(state, params) == pytest.approx(8 * 12004 / 2000)
  key_state = {"key": jax.random.key(0)}
  assert tree_bytes(key_state) == 8  # a threefry key is two uint32


@pytest.mark.parametrize("name", ["adamw", "adafactor", "lion"])
def test_weight_decay_is_scaled_by_the_learning_rate(name):
  # Zero gradients: the whole step is decoupled decay, -lr * wd * p.
  params = {"w": jnp.full((8, 8), 2.0)}
  tx = registry.get(name, 1e-3, 0.01)
  updates, _ = tx.update({"w": jnp.zeros((8, 8))}, tx.init(params), params)
  assert jnp.allclose(updates["w"], -1e-3 * 0.01 * 2.0, rtol=1e-4)
