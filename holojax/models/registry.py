"""Models by preset name, for `holojax train`, `holojax demo` and the benchmarks.

A preset is a config (a frozen dataclass in the shared vocabulary of
:mod:`holojax.models.lm`: ``vocab_size, hidden_size, num_hidden_layers,
num_heads, intermediate_size, max_seq_len``, ...) and a builder. Every
preset is built and called one way::

  spec = registry.get("small")
  model = spec.build(spec.config, rngs=nnx.Rngs(0))
  logits_btv = model(input_ids_bt)              # float32[B, T, V]
  out = model(input_ids_bt, labels=labels_bt)   # CausalLMOutput(logits, loss)

``input_ids_bt`` is int32[B, T] with T <= ``config.max_seq_len``; labels
are aligned with the inputs and shifted inside (HF convention,
``ignore_index`` -100; :func:`holojax.models.lm.causal_lm_loss`). No
caller special-cases a model family. Later modules register their own::

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
# Config fields every preset has (Hugging Face / Llama names).
VOCABULARY = ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "intermediate_size",
              "max_seq_len")


def register(name: str, config, build: Callable[..., nnx.Module], *, overwrite=False) -> None:
  """Adds a preset. ``build(config, rngs=...)`` must return a model that
  follows the contract above (``tests/models/test_registry.py`` checks it
  for every registered preset)."""
  if not dataclasses.is_dataclass(config):
    raise TypeError(f"config for {name!r} must be a dataclass, got {type(config).__name__}")
  for field in VOCABULARY:
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
