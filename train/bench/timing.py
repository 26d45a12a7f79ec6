"""Timing helpers shared by the benchmarks (median after warm-up, copy bandwidth)."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp


def median_time(f, *args, repeats: int = 20, warmup: int = 1) -> float:
  """Median seconds of ``f(*args)`` (blocked until ready) after ``warmup`` calls."""
  for _ in range(warmup):
    jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def copy_bandwidth(num_bytes: int, repeats: int = 20) -> float:
  """Measured device copy bandwidth in bytes/s (bytes read + bytes written)."""
  x = jax.random.normal(jax.random.key(0), (num_bytes // 4,), jnp.float32)
  f = jax.jit(lambda a: a * 1.0000001)
  return 2 * x.nbytes / median_time(f, x, repeats=repeats)


def optimizer_step_ms(opt, grads, params, *, repeats: int = 20, warmup: int = 3) -> float:
  """Median ms of one jitted ``opt.update`` (state donated and threaded through calls)."""
  step = jax.jit(opt.update, donate_argnums=1)
  state = [jax.jit(opt.init)(params)]

  def run(g, p):
    u, state[0] = step(g, state[0], p)
    return u

  return 1e3 * median_time(run, grads, params, repeats=repeats, warmup=warmup)
