"""Golden values: the library's outputs on fixed inputs must not drift.

``tests/golden.npz`` was written before the architecture refactor (kernel
folders, one backend chooser, one model contract, one train step) by
``python -m tests.test_golden --write``. Refactors must reproduce it: the
optimizers' updates, every registered model's logits and the kernels'
outputs. A change that is *meant* to alter numbers rewrites the file in
the same commit and says why.

The functions below use today's public API; if an API moves, update the
call here, never the stored values.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

PATH = os.path.join(os.path.dirname(__file__), "golden.npz")

# Registered optimizers, and the TurboAdam kernel path (interpret on CPU).
OPTIMIZERS = ("adamw", "adafactor", "lion", "turbo_adam", "turbo_adam_v", "holo_adam",
              "holo_adam_max", "holo_adam_conservative")
# Models small enough to run on CPU in a test (every tiny/small preset).
MODELS = ("tiny", "small", "holo-tiny", "hybrid-tiny", "lowrank-tiny", "phasor-tiny",
          "holo-small", "hybrid-small", "lowrank-small", "phasor-small")


def _params():
  ks = jax.random.split(jax.random.key(7), 3)
  return {"w": jax.random.normal(ks[0], (64, 256)) * 0.1,
          "e": jax.random.normal(ks[1], (96, 128)) * 0.02,
          "b": jnp.zeros((256,))}


def _grads(step: int, params):
  k = jax.random.fold_in(jax.random.key(11), step)
  leaves, tdef = jax.tree.flatten(params)
  ks = jax.random.split(k, len(leaves))
  rows = [jnp.logspace(-3, 0, x.shape[0])[:, None] if x.ndim == 2 else 1.0 for x in leaves]
  return tdef.unflatten([jax.random.normal(kk, x.shape) * r for kk, x, r in zip(ks, leaves, rows)])


def _run_optimizer(tx, steps: int = 4):
  import optax
  params = _params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  for i in range(steps):
    updates, state = update(_grads(i, params), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _optimizer_values() -> dict[str, np.ndarray]:
  from holojax.optim import registry, turbo_adam
  out = {}
  for name in OPTIMIZERS:
    params = _run_optimizer(registry.get(name, 1e-2, 0.01))
    for k, v in params.items():
      out[f"opt/{name}/{k}"] = np.asarray(v)
  for key, impl in (("xla", "xla"), ("pallas", "interpret")):  # keys from before the refactor
    params = _run_optimizer(turbo_adam(1e-2, implementation=impl, min_m_compress_elements=1024))
    for k, v in params.items():
      out[f"opt/turbo_adam[{key}]/{k}"] = np.asarray(v)
  return out


def _model_values() -> dict[str, np.ndarray]:
  from holojax.models import registry
  out = {}
  tokens = jax.random.randint(jax.random.key(3), (2, 24), 0, 256)
  for name in MODELS:
    spec = registry.get(name)
    model = spec.build(spec.config, rngs=nnx.Rngs(0))
    logits = np.asarray(model(tokens), np.float32)  # the registry's one call
    out[f"model/{name}"] = logits[..., :32]
    out[f"model/{name}/sum"] = np.asarray(logits.sum(-1))
  return out


def _kernel_values() -> dict[str, np.ndarray]:
  from holojax.kernels.phasor import PhasorBlocks, phasor_memory
  from holojax.kernels.turbo_adam import fused_v_update
  out = {}
  shape = (2, 40, 3, 8)
  ks = jax.random.split(jax.random.key(5), 5)
  v = jax.random.normal(ks[0], shape)
  k = jax.random.uniform(ks[1], shape, minval=-4.0, maxval=4.0)
  q = jax.random.uniform(ks[2], shape, minval=-4.0, maxval=4.0)
  f = jax.random.uniform(ks[3], shape[2:], minval=-0.3, maxval=0.3)
  g = jax.random.normal(ks[4], shape)
  for impl, fn in (("xla", lambda *a: phasor_memory(*a[:3], freq_hd=a[3], implementation="xla")),
                   ("pallas", lambda *a: phasor_memory(
                       *a[:3], freq_hd=a[3], blocks=PhasorBlocks(block_t=16, chunks=2, block_d=4),
                       implementation="interpret"))):
    y, vjp = jax.vjp(fn, v, k, q, f)
    out[f"kernel/phasor[{impl}]/y"] = np.asarray(y)
    for name, d in zip("vkqf", vjp(g)):
      out[f"kernel/phasor[{impl}]/d{name}"] = np.asarray(d)
  kk = jax.random.split(jax.random.key(9), 3)
  g2 = jax.random.normal(kk[0], (6, 128))
  m2 = 0.1 * jax.random.normal(kk[1], (6, 128))
  codes = jax.random.randint(kk[2], (6, 64), 0, 256).astype(jnp.uint8)
  lo = jnp.full((6,), -12.0, jnp.float16)
  hi = jnp.full((6,), 2.0, jnp.float16)
  sc = jnp.array([0.999, 1e-8, 0.1, 0.001], jnp.float32)
  for key, impl in (("xla", "xla"), ("pallas", "interpret")):
    res = fused_v_update(g2, m2, codes, lo, hi, sc, jnp.uint32(3), bits=4, implementation=impl)
    for name, a in zip(("u", "codes", "lo", "hi"), res):
      out[f"kernel/turbo_adam[{key}]/{name}"] = np.asarray(a)
  return out


def _train_values() -> dict[str, np.ndarray]:
  """Losses of a tiny `holojax train` run (the loop's one train step)."""
  from holojax.train import TrainConfig, train
  cfg = TrainConfig(model="tiny", steps=6, batch_size=8, seq_len=32, eval_every=3,
                    eval_batches=2, log_every=1, warmup_steps=2, learning_rate=3e-3,
                    corpus_max_bytes=1_000_000, progress=False, optimizer="turbo_adam")
  res = train(cfg)
  return {"train/loss": np.array([l for _, l in res.train_losses]),
          "train/eval": np.array([l for _, l in res.eval_losses])}


GROUPS = {"opt": _optimizer_values, "model": _model_values, "kernel": _kernel_values,
          "train": _train_values}


@pytest.fixture(scope="module")
def golden():
  with np.load(PATH) as z:
    return dict(z)


# Tolerances: XLA may reassociate differently when code moves between jit
# boundaries; the values must agree to float32 rounding, not bitwise.
TOL = {"opt": 2e-5, "model": 2e-4, "kernel": 2e-5, "train": 2e-5}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_outputs_match_golden(group, golden):
  now = GROUPS[group]()
  want = {k: v for k, v in golden.items() if k.split("/")[0] == group}
  assert set(now) == set(want), set(now) ^ set(want)
  for key in sorted(want):
    a, b = now[key], want[key]
    assert a.shape == b.shape and a.dtype == b.dtype, key
    if a.dtype.kind in "ui":
      np.testing.assert_array_equal(a, b, err_msg=key)
    else:
      np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=TOL[group],
                                 atol=TOL[group], err_msg=key)


if __name__ == "__main__" and "--write" in sys.argv:
  vals = {}
  for fn in GROUPS.values():
    vals.update(fn())
  np.savez_compressed(PATH, **vals)
  print(f"wrote {len(vals)} arrays to {PATH}")
