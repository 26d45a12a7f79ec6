"""Pieces the benchmarks share (train/bench/common.py)."""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from holojax.train.bench import common
from holojax.train.step import host_lr, init_state, make_train_step, schedule_values


def test_warmup_cosine():
  """Linear warm-up from 0, then cosine to peak / 10: the hand-written schedule the
  lock-step benchmarks had, but with the warm-up one step later (it began at peak / W)."""
  peak, w, n = 1.0, 10, 100
  lrs = schedule_values(common.warmup_cosine(peak, w, n), n + 1)
  for s in range(n + 1):
    want = (peak * s / w if s < w
            else peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (s - w) / (n - w)))))
    assert lrs[s] == pytest.approx(want, abs=1e-6)
  assert common.warmup_cosine(1.0, 10, 5)(4) == pytest.approx(0.4)  # total <= warm-up


def test_adamw_decays_only_matrices_when_asked():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  for only, b_decayed in ((True, False), (False, True)):
    tx = common.adamw(1.0, weight_decay=0.5, b2=0.98, matrices_only=only)
    upd, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(upd["w"], -0.5)  # zero grads: only the decay, times -lr
    assert bool(jnp.all(upd["b"] == -0.5)) == b_decayed


def test_fit_steps():
  assert common.fit_steps(10.0, 0.5, done=30, most=1000) == 50
  assert common.fit_steps(1e9, 0.5, done=30, most=1000) == 1000
  assert common.fit_steps(-5.0, 0.5, done=30, most=1000) == 30


def _setup():
  tx = host_lr(common.adamw, weight_decay=0.0, b2=0.99)
  graphdef, state = init_state(lambda: nnx.Linear(4, 1, rngs=nnx.Rngs(0)), tx)
  loss = lambda model, xy: jnp.mean((model(xy[0]) - xy[1]) ** 2)  # noqa: E731
  return make_train_step(graphdef, tx, loss), state


def test_train_steps_logs_one_step_late_and_stops_at_the_deadline():
  step, state = _setup()
  xy = (jnp.ones((8, 4)), jnp.zeros((8, 1)))
  losses, seen, lrs = [], [], []

  def lr_at(i):
    lrs.append(i)
    return 1e-2

  state, done = common.train_steps(step, state, lambda i: xy, lr_at, range(0, 10),
                                   losses=losses, log_at=lambda i: i % 4 == 0,
                                   on_loss=lambda i, v: seen.append((i, len(losses), v)))
  assert done == 10 and len(losses) == 10 and lrs == list(range(10))
  assert [(i, n) for i, n, _ in seen] == [(0, 2), (4, 6), (8, 10)]  # read one step later
  assert seen[-1][2] < seen[0][2] and seen[0][2] == pytest.approx(float(losses[0]))
  state, done = common.train_steps(step, state, lambda i: xy, lr_at, range(10, 20),
                                   losses=losses, stop_at=time.perf_counter())
  assert done == 10 and len(losses) == 10


def test_check_finite():
  common.check_finite("run", 3, 1.0)
  with pytest.raises(FloatingPointError, match="run: loss nan at step 3"):
    common.check_finite("run", 3, float("nan"))


def test_random_params_and_grads_and_state_bits():
  shapes = {"w": (3, 4), "b": (4,)}
  params, grads = common.random_params_and_grads(shapes)
  assert params["w"].shape == (3, 4) and grads["b"].shape == (4,)
  bits = common.state_bits({"adam": optax.adam(1e-3), "sgd": optax.sgd(1e-3)}, shapes)
  assert bits["adam"] == 64.0 + 32 / 16 and bits["sgd"] == 0.0  # m, v; an int32 count


def test_kernel_table_sums_gpu_stream_events_per_step():
  ev = lambda name, ns: type("E", (), {"name": name, "duration_ns": ns})
  line = lambda name, evs: type("L", (), {"name": name, "events": evs})
  plane = lambda name, lines: type("P", (), {"name": name, "lines": lines})
  planes = [plane("/host:CPU", [line("python", [ev("host", 9e9)])]),
            plane("/device:GPU:0", [line("Stream #13(Compute)", [ev("a", 3e6), ev("b", 1e6),
                                                                  ev("a", 3e6), ev("b", 1e6)]),
                                    line("XLA Ops", [ev("a", 3e6)])])]
  t = common.kernel_table(planes, steps=2)
  assert t["kernel_ms"] == pytest.approx(4.0) and t["kernels"] == 2
  assert [(k["name"], k["ms"], k["calls"]) for k in t["top"]] == [("a", 3.0, 1), ("b", 1.0, 1)]
  assert common.kernel_table(planes[:1], steps=2) is None


def test_kernel_profile_runs_and_is_none_without_device_kernels():
  f = jax.jit(lambda: jnp.ones((8,)) * 2)
  out = common.kernel_profile(f, steps=2)
  assert out is None if jax.default_backend() == "cpu" else out["kernels"] >= 1


def test_variant_fields():
  base = {"write_gate": False, "conv": 0, "window": 0, "window_rope": False, "hd_dim": 64}
  assert common.variant_fields("seed", 64) == base
  assert common.variant_fields("gate+conv3+win8+hd2", 64) == {
      "write_gate": True, "conv": 3, "window": 8, "window_rope": False, "hd_dim": 128}
  assert common.variant_fields("win8+rope", 64)["window_rope"] is True
  assert common.variant_fields("hd0.5", 64)["hd_dim"] == 32
  for bad in ("", "seed+gate", "gate+gate", "conv", "win4+win8", "decay", "rope",
              "rope+rope+win4"):
    with pytest.raises(ValueError, match="variants"):
      common.variant_fields(bad, 64)
  assert common.arm_name("seed") == "phasor" and common.arm_name("win8") == "phasor:win8"
