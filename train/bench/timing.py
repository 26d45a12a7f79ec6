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


def random_params_and_grads(shapes, seed: int = 0):
  """Random f32 params (std 0.02) and grads (1e-3, per-column scales over ~3 decades).

  ``shapes`` is a pytree whose leaves are shape tuples. Random data, never
  constants: constants hide indexing bugs and make block statistics degenerate.
  """
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(jax.random.key(seed), 2 * len(leaves))
  params = [0.02 * jax.random.normal(k, s) for k, s in zip(keys[::2], leaves)]
  grads = [1e-3 * jax.random.normal(k, s) * jnp.exp(jax.random.normal(jax.random.fold_in(k, 1),
                                                                       s[-1:]))
           for k, s in zip(keys[1::2], leaves)]
  return jax.tree.unflatten(treedef, params), jax.tree.unflatten(treedef, grads)


def time_optimizers(impls: dict, grads, params, *, repeats: int, extra=None) -> dict:
  """Step time of each optimizer in ``impls`` (name -> transformation), in one run.

  Per name: ``ms`` (median step), ``wall_s_incl_compile``, ``x_adamw`` (ratio to
  the ``optax.adamw`` entry, if any) and ``extra(name)`` fields; a failure is
  recorded as ``error`` and the others still run. Prints each row as it is timed.
  """
  out = {}
  for name, opt in impls.items():
    t0 = time.perf_counter()
    try:
      out[name] = {"ms": optimizer_step_ms(opt, grads, params, repeats=repeats),
                   **(extra(name) if extra else {})}
    except Exception as e:  # report, keep going (e.g. a kernel that fails to lower)
      out[name] = {"ms": None, "error": f"{type(e).__name__}: {e}"[:300]}
    out[name]["wall_s_incl_compile"] = time.perf_counter() - t0
    print(f"timed {name}: {out[name]}", flush=True)
  base = out.get("optax.adamw", {}).get("ms")
  for v in out.values():
    if v["ms"] is not None and base:
      v["x_adamw"] = v["ms"] / base
  return out
