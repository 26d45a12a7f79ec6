"""Whole models and the model preset registry."""

from holojax.models import registry
from holojax.models.gpt import GPT, PRESETS as GPT_PRESETS, GPTConfig
from holojax.models.holo_lm import HOLO_LM_PRESETS, HoloLM, HoloLMConfig

for _name, _cfg in GPT_PRESETS.items():
  registry.register(_name, _cfg, GPT)
for _name, _cfg in HOLO_LM_PRESETS.items():  # holo-tiny, hybrid-small, lowrank-small, ...
  registry.register(_name, _cfg, HoloLM)

__all__ = ["GPT", "GPTConfig", "GPT_PRESETS", "HOLO_LM_PRESETS", "HoloLM", "HoloLMConfig",
           "registry"]
