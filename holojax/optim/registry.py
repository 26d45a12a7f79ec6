"""Optimizers by name, for `holojax train` and `holojax demo`.

Every entry is a factory ``f(learning_rate, weight_decay, **kwargs) ->
optax.GradientTransformation``. ``learning_rate`` may be a float or an optax
schedule. Later modules add their optimizers with :func:`register`::

    from holojax.optim import registry
    registry.register("my_adam", lambda learning_rate, weight_decay, **kw:
                      optax.adamw(learning_rate, weight_decay=weight_decay, **kw))
"""

from __future__ import annotations

import inspect
from typing import Callable, Protocol

import optax


class OptimizerFactory(Protocol):
  def __call__(self, learning_rate: optax.ScalarOrSchedule, weight_decay: float,
               **kwargs) -> optax.GradientTransformation: ...


_REGISTRY: dict[str, OptimizerFactory] = {}
_ACCEPTS: dict[str, tuple[str, ...] | None] = {}  # extra keyword arguments; None: any


def register(name: str, factory: OptimizerFactory, *, overwrite: bool = False,
             wraps: Callable | None = None) -> None:
  """Adds ``factory`` under ``name`` (lower case). Refuses silent overwrites.

  ``wraps`` is the function ``factory`` passes its keyword arguments to (e.g.
  ``optax.adamw``): its keyword parameters are the extra arguments ``get``
  accepts, so a misspelt one is a ``ValueError`` listing them.
  """
  key = name.lower()
  if key in _REGISTRY and not overwrite:
    raise ValueError(f"optimizer {name!r} is already registered; pass overwrite=True")
  _REGISTRY[key] = factory
  _ACCEPTS[key] = None if wraps is None else tuple(
      p.name for p in inspect.signature(wraps).parameters.values()
      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
      and p.name not in ("learning_rate", "weight_decay"))


def accepts(name: str) -> tuple[str, ...] | None:
  """The extra keyword arguments optimizer ``name`` takes (None: not declared)."""
  return _ACCEPTS.get(name.lower())


def names() -> list[str]:
  """Registered optimizer names, sorted."""
  return sorted(_REGISTRY)


def get(name: str, learning_rate: optax.ScalarOrSchedule, weight_decay: float = 0.0,
        **kwargs) -> optax.GradientTransformation:
  """Builds the optimizer registered as ``name``.

  Raises:
    ValueError: ``name`` is not registered, or a keyword argument is not one
      it takes (the message lists what is).
  """
  key = name.lower()
  if key not in _REGISTRY:
    raise ValueError(f"unknown optimizer {name!r}; choose one of {names()}")
  ok = _ACCEPTS[key]
  bad = sorted(set(kwargs) - set(ok)) if ok is not None else []
  if bad:
    raise ValueError(f"optimizer {name!r} takes no argument {', '.join(map(repr, bad))}; "
                     f"it accepts {', '.join(ok)}")
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


register("adamw", _adamw, wraps=optax.adamw)
register("adafactor", _adafactor, wraps=optax.adafactor)
register("lion", _lion, wraps=optax.lion)
