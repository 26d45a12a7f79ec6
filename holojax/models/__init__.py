"""Whole models and the model preset registry."""

from holojax.models import registry
from holojax.models.gpt import GPT, PRESETS as GPT_PRESETS, GPTConfig

for _name, _cfg in GPT_PRESETS.items():
  registry.register(_name, _cfg, GPT)

__all__ = ["GPT", "GPTConfig", "GPT_PRESETS", "registry"]
