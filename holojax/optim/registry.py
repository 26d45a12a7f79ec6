"""Optimizers by name, for `holojax train` and `holojax demo`.

Every entry is a factory ``f(learning_rate, weight_decay, **kwargs) ->
optax.GradientTransformation``. ``learning_rate`` may be a float or an optax
schedule. Later modules add their optimizers with :func:`register`::

    from holojax.optim import registry
    registry.register("my_adam", lambda learning_rate, weight_decay, **kw:
                      optax.adamw(learning_rate, weight_decay=weight_decay, **kw))
"""

from __future__ import annotations

from typing import Protocol

import optax


class OptimizerFactory(Protocol):
  def __call__(self, learning_rate: optax.ScalarOrSchedule, weight_decay: float,
               **kwargs) -> optax.GradientTransformation: ...


_REGISTRY: dict[str, OptimizerFactory] = {}


def register(name: str, factory: OptimizerFactory, *, overwrite: bool = False) -> None:
  """Adds ``factory`` under ``name`` (lower case). Refuses silent overwrites."""
  key = name.lower()
  if key in _REGISTRY and not overwrite:
    raise ValueError(f"optimizer {name!r} is already registered; pass overwrite=True")
  _REGISTRY[key] = factory


def names() -> list[str]:
  """Registered optimizer names, sorted."""
  return sorted(_REGISTRY)


def get(name: str, learning_rate: optax.ScalarOrSchedule, weight_decay: float = 0.0,
        **kwargs) -> optax.GradientTransformation:
  """Builds the optimizer registered as ``name``.

  Raises:
    ValueError: ``name`` is not registered (the message lists what is).
  """
  key = name.lower()
  if key not in _REGISTRY:
    raise ValueError(f"unknown optimizer {name!r}; choose one of {names()}")
  return _REGISTRY[key](learning_rate, weight_decay, **kwargs)


def _adamw(learning_rate, weight_decay, **kw):
  return optax.adamw(learning_rate, weight_decay=weight_decay, **kw)


def _adafactor(learning_rate, weight_decay, **kw):
  """Adafactor with AdamW-style decoupled weight decay (-lr * (u + wd * p)).

  optax.adafactor adds ``weight_decay_rate * p`` *after* its learning-rate
  scaling, so its decay is not multiplied by the learning rate: 0.01 there
  shrinks every weight by 1% a step and wrecks training. Here the decay goes
  before the learning rate, as in AdamW. Without parameter-scale
  multiplication the step is RMS-normalised like Adam's, so the same
  learning rates apply (optax's default scales each step by the parameter's
  RMS, which stalls small-init models at AdamW learning rates).
  """
  kw.setdefault("multiply_by_parameter_scale", False)
  return optax.chain(optax.adafactor(learning_rate=None, **kw),
                     optax.scale(-1.0),  # optax.adafactor ends with a sign flip
                     optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(learning_rate))


def _lion(learning_rate, weight_decay, **kw):
  return optax.lion(learning_rate, weight_decay=weight_decay, **kw)


register("adamw", _adamw)
register("adafactor", _adafactor)
register("lion", _lion)
