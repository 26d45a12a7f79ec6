"""Whole models and the model preset registry.

Every model follows one contract (:mod:`holojax.models.lm`):
``model(input_ids)`` -> logits float32[B, T, V]; ``model(input_ids, labels)``
-> ``CausalLMOutput(logits, loss)``.
"""

import dataclasses as _dc

from holojax.models import registry
from holojax.models.gpt import GPT, PRESETS as GPT_PRESETS, GPTConfig
from holojax.models.holo_lm import HOLO_LM_PRESETS, HoloLM, HoloLMConfig
from holojax.models.holo_transformer import (HOLO_PRESETS, HoloConfig, HoloForCausalLM,
                                             decode_steps, generate)
from holojax.models.lm import CausalLMOutput, causal_lm_loss, next_token_loss

# Byte-level phasor models for `holojax train` (vocabulary 256, the corpus').
PHASOR_PRESETS = {
    "phasor-tiny": _dc.replace(HOLO_PRESETS["tiny"], vocab_size=256),
    # Same width and depth as the `small` transformer.
    "phasor-small": HoloConfig(vocab_size=256, hidden_size=128, hd_dim=256, num_hidden_layers=4,
                               num_heads=4, intermediate_size=512, max_seq_len=16384),
}

for _name, _cfg in GPT_PRESETS.items():
  registry.register(_name, _cfg, GPT)
for _name, _cfg in HOLO_LM_PRESETS.items():  # holo-tiny, hybrid-small, lowrank-small, ...
  registry.register(_name, _cfg, HoloLM)
for _name, _cfg in PHASOR_PRESETS.items():
  registry.register(_name, _cfg, HoloForCausalLM)

__all__ = ["GPT", "GPTConfig", "GPT_PRESETS", "HOLO_LM_PRESETS", "HOLO_PRESETS",
           "PHASOR_PRESETS", "CausalLMOutput", "HoloConfig", "HoloForCausalLM", "HoloLM",
           "HoloLMConfig", "causal_lm_loss", "decode_steps", "generate", "next_token_loss",
           "registry"]
