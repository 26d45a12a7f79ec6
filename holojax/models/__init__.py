"""Whole models and the model preset registry.

Every model follows one contract (:mod:`holojax.models.lm`):
``model(input_ids)`` -> logits float32[B, T, V]; ``model(input_ids, labels)``
-> ``CausalLMOutput(logits, loss)``.
"""

import dataclasses as _dc

from holojax.models import registry
from holojax.models.gpt import GPT, PRESETS as GPT_PRESETS, GPTConfig
from holojax.models.holo_lm import HOLO_LM_PRESETS, HoloLM, HoloLMConfig
from holojax.models.holo_transformer import HOLO_PRESETS, HoloConfig, HoloForCausalLM
from holojax.models.lm import CausalLMOutput, causal_lm_loss, next_token_loss
from holojax.models.decoding import decode_steps, generate
from holojax.models.kv_cache import CacheSpec
from holojax.models.llama import LLAMA_PRESETS, Llama, LlamaCache, LlamaConfig
from holojax.models.pretrained import fetch as fetch_pretrained, find_gguf, load_pretrained
from holojax.models.tokenizer import Tokenizer

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
for _name, _cfg in LLAMA_PRESETS.items():  # random init; load_pretrained fills real weights
  registry.register(_name, _cfg, Llama)

__all__ = ["GPT", "GPTConfig", "GPT_PRESETS", "HOLO_LM_PRESETS", "HOLO_PRESETS",
           "LLAMA_PRESETS", "PHASOR_PRESETS", "CacheSpec", "CausalLMOutput", "HoloConfig",
           "HoloForCausalLM", "HoloLM", "HoloLMConfig", "Llama", "LlamaCache", "LlamaConfig",
           "Tokenizer", "causal_lm_loss", "decode_steps", "fetch_pretrained", "find_gguf",
           "generate", "load_pretrained", "next_token_loss", "registry"]
