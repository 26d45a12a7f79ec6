"""TurboAdam and HoloAdam where optax.adamw works: true skips, any gradient scale,
validated arguments, gradient/parameter shape mismatches (issue 11)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from holojax.optim import holo_adam, turbo_adam

OURS = {
    "turbo_adam": lambda lr, **kw: turbo_adam(lr, min_m_compress_elements=1024, **kw),
    "turbo_adam_v": lambda lr, **kw: turbo_adam(lr, compress_m=False, **kw),
    "turbo_adam_faithful": lambda lr, **kw: turbo_adam(lr, faithful=True,
                                                       min_m_compress_elements=1024, **kw),
    "turbo_adam_flat": lambda lr, **kw: turbo_adam(lr, min_m_compress_elements=1024,
                                                   tree_layout="flat", **kw),
    "holo_adam": lambda lr, **kw: holo_adam(lr, min_compress_size=1024, **kw),
    "holo_adam_faithful": lambda lr, **kw: holo_adam(lr, min_compress_size=1024, faithful=True,
                                                     **kw),
    "holo_adam_flat": lambda lr, **kw: holo_adam(lr, min_compress_size=1024, tree_layout="flat",
                                                 **kw),
}
# The overflow guarantees hold for the default encodings (faithful keeps the
# original's fp16 CoState scales and unclipped gate).
SAFE = ("turbo_adam", "turbo_adam_v", "turbo_adam_flat", "holo_adam", "holo_adam_flat")


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"w": jax.random.normal(k1, (64, 128)), "b": jax.random.normal(k2, (16,))}


def _normal_grads(step, params):
  leaves, tdef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.fold_in(jax.random.key(1), step), len(leaves))
  return tdef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _run(tx, grads_seq, params=None):
  params = _params() if params is None else params
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for g in grads_seq:
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(u)
  return params, state, out


@pytest.mark.parametrize("name", OURS)
def test_non_finite_step_is_a_true_skip(name):
  """With weight decay 0.1 and a linear schedule, a NaN step changes nothing:
  the run with it equals the run without it (decay, schedule and moments)."""
  sched = optax.linear_schedule(1e-2, 1e-3, 10)
  tx = OURS[name](sched, weight_decay=0.1)
  clean = [_normal_grads(i, _params()) for i in range(6)]
  bad = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), clean[0])
  p_clean, s_clean, _ = _run(tx, clean)
  p_bad, s_bad, ups = _run(tx, clean[:3] + [bad] + clean[3:])
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(ups[3]))
  for a, b in zip(jax.tree.leaves(p_clean), jax.tree.leaves(p_bad)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  assert int(s_bad.total_notfinite) == 1 and int(s_clean.total_notfinite) == 0


@pytest.mark.parametrize("name", SAFE)
def test_large_gradient_does_not_poison_later_steps(name):
  """A constant gradient of 7e5, then five N(0,1) steps: all updates finite."""
  p = _params()
  grads = [jax.tree.map(lambda x: jnp.full_like(x, 7e5), p)] + [_normal_grads(i, p)
                                                              for i in range(5)]
  _, state, ups = _run(OURS[name](1e-3), grads)
  for u in ups:
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
  assert all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32)))) for x in jax.tree.leaves(state)
             if jnp.issubdtype(x.dtype, jnp.inexact))


@pytest.mark.parametrize("name", SAFE)
@pytest.mark.parametrize("scale", [1e19, 1e30, 3e38])
def test_huge_gradients_give_finite_state_and_updates(name, scale):
  """Any finite gradient up to float32's range: finite state and updates."""
  p = _params()
  grads = [jax.tree.map(lambda x: scale * jnp.sign(x), _normal_grads(i, p)) for i in range(3)]
  _, state, ups = _run(OURS[name](1e-3), grads)
  for u in ups:
    for x in jax.tree.leaves(u):
      assert bool(jnp.all(jnp.isfinite(x))) and float(jnp.max(jnp.abs(x))) < 1.0
  for x in jax.tree.leaves(state):
    if jnp.issubdtype(x.dtype, jnp.inexact):
      assert bool(jnp.all(jnp.isfinite(x.astype(jnp.complex64)))), x.dtype


@pytest.mark.parametrize("name", SAFE)
def test_updates_follow_adam_at_any_scale(name):
  """Adam's update does not depend on the gradient's scale (up to eps); the
  compressed optimizers' must not either, across 2^-40 .. 2^100 (Adam's own
  float32 v overflows from 2^64 on). Powers of two: the log grids shift exactly."""
  p = {"w": jnp.zeros((64, 128))}
  base = [{"w": jax.random.normal(jax.random.fold_in(jax.random.key(2), i), (64, 128))}
          for i in range(4)]
  ref = _run(OURS[name](1.0, eps=0.0), base, p)[2][-1]["w"]
  adam = _run(optax.adam(1.0, eps=0.0), base, p)[2][-1]["w"]
  cos = float(jnp.sum(ref * adam) / jnp.linalg.norm(ref) / jnp.linalg.norm(adam))
  assert cos > (0.9 if name.startswith("turbo") else 0.5), cos
  for e in (-40, 60, 100):
    c = 2.0**e
    u = _run(OURS[name](1.0, eps=0.0), [{"w": c * g["w"]} for g in base], p)[2][-1]["w"]
    # Equal up to float rounding (log2 of shifted values rounds differently).
    assert float(jnp.linalg.norm(u - ref) / jnp.linalg.norm(ref)) < 1e-4, e


@pytest.mark.parametrize("name", SAFE)
def test_least_squares_with_large_targets_trains(name):
  """Least squares with targets ~1e8 (gradients ~1e8-1e10): the loss falls."""
  kx, kw = jax.random.split(jax.random.key(4))
  x_nd = jax.random.normal(kx, (64, 128))
  w_true = 1e8 * jax.random.normal(kw, (128, 64))
  y_no = x_nd @ w_true
  loss = lambda p: jnp.mean(jnp.square(x_nd @ p["w"] - y_no))
  tx = OURS[name](1e6, weight_decay=0.0)
  p = {"w": jnp.zeros((128, 64))}
  s = tx.init(p)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  l0 = float(loss(p))
  for _ in range(100):
    p, s = step(p, s)
  l1 = float(loss(p))
  assert math.isfinite(l1) and l1 < 0.5 * l0, (l0, l1)


# ----------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("lr, err", [("1e-3", TypeError), (-1e-3, ValueError),
                                     (float("nan"), ValueError), (float("inf"), ValueError),
                                     (True, TypeError)])
def test_learning_rate_validated(name, lr, err):
  with pytest.raises(err, match="learning_rate"):
    OURS[name](lr)


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("bad", ["transposed", "shorter"])
def test_gradient_shape_mismatch_names_the_leaf(name, bad):
  p = _params()
  tx = OURS[name](1e-3)
  s = tx.init(p)
  w = p["w"].T if bad == "transposed" else p["w"][:, :127]
  g = {"w": w, "b": p["b"]}
  with pytest.raises(ValueError, match=r"\['w'\]"):
    tx.update(g, s, p)
  # Without params (scale_by_* alone) the state's layout still catches a
  # transpose (the flat layout's buffers hold no per-tensor names).
  if bad == "transposed":
    with pytest.raises(ValueError, match="tree_layout='flat'" if name.endswith("flat")
                       else r"\['w'\]"):
      _scale_by(name).update(g, s.inner_state[0])


def _scale_by(name):
  from holojax.optim import scale_by_holo_adam, scale_by_turbo_adam
  if name.startswith("turbo"):
    kw = dict(compress_m=False) if name == "turbo_adam_v" else dict(min_m_compress_elements=1024)
    return scale_by_turbo_adam(faithful=name.endswith("faithful"),
                               tree_layout="flat" if name.endswith("flat") else "leaf", **kw)
  return scale_by_holo_adam(min_compress_size=1024, faithful=name.endswith("faithful"),
                            tree_layout="flat" if name.endswith("flat") else "leaf")
