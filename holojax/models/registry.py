"""Models by preset name, for `holojax train` and `holojax demo`.

A preset is a config (a frozen dataclass with ``vocab_size`` and
``max_seq_len``) and a builder ``build(config, rngs) -> nnx.Module`` whose
call is ``model(tokens_bt int32[B, T]) -> logits float32[B, T, V]``. Later
modules register their own families::

  registry.register("holo-small", HoloLMConfig(...), HoloLM)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

from flax import nnx


class ModelSpec(NamedTuple):
  config: Any
  build: Callable[..., nnx.Module]


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, config, build: Callable[..., nnx.Module], *, overwrite=False) -> None:
  """Adds a preset. ``build(config, rngs=...)`` must return the model."""
  if not dataclasses.is_dataclass(config):
    raise TypeError(f"config for {name!r} must be a dataclass, got {type(config).__name__}")
  for field in ("vocab_size", "max_seq_len"):
    if not hasattr(config, field):
      raise TypeError(f"config for {name!r} needs a {field!r} field")
  if name in _REGISTRY and not overwrite:
    raise ValueError(f"model preset {name!r} is already registered; pass overwrite=True")
  _REGISTRY[name] = ModelSpec(config, build)


def names() -> list[str]:
  return sorted(_REGISTRY)


def get(name: str, **overrides) -> ModelSpec:
  """The preset ``name`` with config fields replaced by ``overrides``."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown model preset {name!r}; choose one of {names()}")
  spec = _REGISTRY[name]
  return ModelSpec(dataclasses.replace(spec.config, **overrides), spec.build)


def describe(config) -> dict:
  """A JSON-able description of a config (its class and fields)."""
  return {"class": type(config).__name__, **dataclasses.asdict(config)}
