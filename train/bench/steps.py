"""Training pieces shared by the benchmarks that train several models in
lock-step (``recall``, ``long_context``): a host-side learning-rate
schedule and one jitted train step with the learning rate as an argument.

The step count of those benchmarks is fitted to a time budget after a few
calibration steps, so the schedule's length is only known once training is
under way; the warm-up does not depend on it.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import optax


def lr_at(step: int, total: int, *, peak: float, warmup: int) -> float:
  """Linear warm-up to ``peak``, then cosine down to peak / 10 at ``total``.

  lr(s) = peak (s + 1) / W                                 for s < W
        = peak (0.1 + 0.45 (1 + cos(pi (s - W) / (N - W))))  otherwise

  Example:
    >>> lr_at(0, 100, peak=1.0, warmup=10), lr_at(10, 100, peak=1.0, warmup=10)
    (0.1, 1.0)
  """
  if step < warmup:
    return peak * (step + 1) / warmup
  frac = min(1.0, (step - warmup) / max(total - warmup, 1))
  return peak * (0.1 + 0.45 * (1.0 + math.cos(math.pi * frac)))


def adamw_direction(weight_decay: float, *, b2: float,
                    matrices_only: bool = False) -> optax.GradientTransformation:
  """AdamW without the learning rate (``lr_train_step`` applies -lr * update):
  global-norm clipping at 1, Adam (b1 = 0.9), decoupled weight decay on every
  parameter or, with ``matrices_only``, on those of 2+ dimensions."""
  mask = (lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)) if matrices_only else None
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.scale_by_adam(b1=0.9, b2=b2),
                     optax.add_decayed_weights(weight_decay, mask=mask))


def lr_train_step(loss_fn: Callable[..., jax.Array],
                  tx: optax.GradientTransformation):
  """jit(step(params, opt_state, *batch, lr) -> (params, opt_state, loss)).

  ``loss_fn(params, *batch)``; the update is params - lr * tx(grads), with
  params and optimizer state donated. ``batch`` may carry non-trained state
  (an ``nnx.split`` rest) as well as data.
  """
  def step(params, opt_state, *args):
    *batch, lr = args
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    upd, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), params,
                          upd)
    return params, opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))
