"""One train step for every loop: model + optimizer state, the jitted step, the eval step.

The state is ``{"model": nnx.State of every model variable, "opt": optax
state}``; the optimizer sees the parameters as a plain nested dict
(``State.to_pure_dict``), so optax states with a NamedTuple per parameter
(TurboAdam, HoloAdam) stay plain pytrees. One step is

  loss, g = value_and_grad(loss_fn)(model, batch)      (g over nnx.Param only)
  u, opt  = tx.update(g, opt, params);  params <- params + u

with the state donated. ``loss_fn(model, batch)`` is a free function and
``batch`` any pytree (a token array, an ``LMExamples``, a tuple).
``train/loop.py`` and every benchmark and demo that trains build their step
here.

Example:
  >>> import jax.numpy as jnp, optax
  >>> from flax import nnx
  >>> tx = optax.sgd(0.1)
  >>> graphdef, state = init_state(lambda: nnx.Linear(2, 1, rngs=nnx.Rngs(0)), tx)
  >>> loss = lambda model, xy: jnp.mean((model(xy[0]) - xy[1]) ** 2)
  >>> step = make_train_step(graphdef, tx, loss)
  >>> xy = (jnp.ones((4, 2)), jnp.zeros((4, 1)))
  >>> state, m1 = step(state, xy)
  >>> state, m2 = step(state, xy)
  >>> sorted(m1), bool(m2["train/loss"] < m1["train/loss"])
  (['train/grad_norm', 'train/loss'], True)
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from holojax.train import sharding

LossFn = Callable[[nnx.Module, Any], jax.Array]


def init_state(make_model: Callable[[], nnx.Module], tx: optax.GradientTransformation,
               mesh: jax.sharding.Mesh | None = None) -> tuple[nnx.GraphDef, dict]:
  """``(graphdef, {"model": nnx.State, "opt": optax state})`` of ``make_model()``.

  With ``mesh``, model and optimizer state are created already sharded
  (``sharding.state_shardings``: FSDP over ``fsdp``, replicated over
  ``data``) inside one jitted function, so no full copy ever sits on one
  device; without, the model is built eagerly on the default device.
  """

  def make():
    model = make_model()
    return model, tx.init(nnx.state(model, nnx.Param).to_pure_dict())

  def as_state(model, opt_state):
    graphdef, model_state = nnx.split(model)
    return graphdef, {"model": model_state, "opt": opt_state}

  if mesh is None:
    return as_state(*make())
  graphdef, abstract = as_state(*nnx.eval_shape(make))
  shardings = sharding.state_shardings(abstract, mesh)
  state = jax.jit(lambda: as_state(*make())[1], out_shardings=shardings)()
  return graphdef, state


def train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn):
  """The pure step ``(state, batch) -> (state, {"train/loss", "train/grad_norm"})``.

  The gradient is ``jax.value_and_grad`` over the split-off parameters (other
  variables the loss changes, such as RNG counters, come back as its aux);
  ``nnx.value_and_grad`` of the whole model measured one extra
  gradient-sized temporary in XLA's memory analysis (a scanned Llama step:
  2x the parameters' bytes against 1x), which is what decides whether a 13B
  step fits one GPU (``holojax bench big_step``).
  """

  def step(state, batch):
    gdef, params, rest = nnx.split(nnx.merge(graphdef, state["model"]), nnx.Param, ...)

    def loss_of(p):
      model = nnx.merge(gdef, p, rest)
      return loss_fn(model, batch), nnx.state(model, nnx.Not(nnx.Param))

    (loss, rest), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    p, g = params.to_pure_dict(), grads.to_pure_dict()
    # The norm reads g before tx.update may overwrite it in place (TurboAdam's
    # layer loop); the barrier orders the read first. A precaution: the H200
    # buffer assignment of the 13B step, compiled with it, holds no copy of g.
    g, grad_norm = jax.lax.optimization_barrier((g, optax.tree.norm(g)))
    updates, opt_state = tx.update(g, state["opt"], p)
    params.replace_by_pure_dict(optax.apply_updates(p, updates))
    model = nnx.merge(gdef, params, rest)
    metrics = {"train/loss": loss, "train/grad_norm": grad_norm}
    return {"model": nnx.state(model), "opt": opt_state}, metrics

  return step


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    loss_fn: LossFn, *, mesh: jax.sharding.Mesh | None = None,
                    state_sharding: Any = None):
  """``jit(train_step)`` with the state donated; with ``mesh``, the state keeps
  ``state_sharding`` and the metrics come back replicated."""
  out = None if mesh is None else (state_sharding, sharding.replicated(mesh))
  return jax.jit(train_step(graphdef, tx, loss_fn), donate_argnums=0, out_shardings=out)


def make_eval_step(graphdef: nnx.GraphDef, fn: Callable[[nnx.Module, Any], Any], *,
                   mesh: jax.sharding.Mesh | None = None):
  """``jit((state, batch) -> fn(model, batch))``, replicated on ``mesh`` if given."""
  out = None if mesh is None else sharding.replicated(mesh)

  @partial(jax.jit, out_shardings=out)
  def eval_step(state, batch):
    return fn(nnx.merge(graphdef, state["model"]), batch)

  return eval_step


def model_of(graphdef: nnx.GraphDef, state: dict) -> nnx.Module:
  """The model of a train state."""
  return nnx.merge(graphdef, state["model"])


# ----------------------------------------------------------------------------
# A learning rate set from the host (benchmarks that fit their steps to a budget)


def host_lr(tx_factory: Callable[..., optax.GradientTransformation], **kwargs
            ) -> optax.GradientTransformation:
  """``tx_factory(learning_rate, **kwargs)`` whose learning rate lives in the
  optimizer state (``optax.inject_hyperparams``), set per step with
  ``with_learning_rate``: the step count can change after training started
  without recompiling.

  Example:
    >>> tx = host_lr(optax.sgd)
    >>> state = {"opt": tx.init({"w": jnp.ones(2)})}
    >>> float(with_learning_rate(state, 0.5)["opt"].hyperparams["learning_rate"])
    0.5
  """
  return optax.inject_hyperparams(partial(tx_factory, **kwargs),
                                  hyperparam_dtype=jnp.float32)(learning_rate=0.0)


def with_learning_rate(state: dict, lr) -> dict:
  """``state`` whose ``host_lr`` learning rate is ``lr`` (a host scalar)."""
  opt = state["opt"]
  hp = {**opt.hyperparams, "learning_rate": np.float32(lr)}
  return {**state, "opt": opt._replace(hyperparams=hp)}


def schedule_values(schedule: optax.Schedule, steps: int) -> np.ndarray:
  """float32[steps]: an optax schedule at steps 0..steps-1, on the host.

  Example:
    >>> schedule_values(optax.linear_schedule(0.0, 1.0, 4), 5).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
  """
  return np.asarray(jax.vmap(schedule)(jnp.arange(steps)), np.float32)
