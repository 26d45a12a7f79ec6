"""Flax NNX layers of holojax."""

from holojax.nn.embed import Embed
from holojax.nn.holo import (
  DenseAttention, HoloAttention, HoloBasis, HoloLinear, HoloTransformerBlock,
  HybridHoloBlock, LowRankAttention, LowRankLinear, LowRankTransformerBlock,
  SineActivation, equal_param_rank, holo_basis, holo_basis_count,
  holo_param_count, lowrank_param_count)

from holojax.nn.phasor import (
  PhasorAttention, PhasorCache, bind, generate_random_phasors, phasor_memory,
  positional_phases, recall_probability, rope_frequencies, unbind)
from holojax.nn.window import WindowAttention, WindowCache

__all__ = [
  "Embed",
  "PhasorAttention", "PhasorCache", "bind", "generate_random_phasors", "phasor_memory",
  "positional_phases", "recall_probability", "rope_frequencies", "unbind",
  "DenseAttention", "HoloAttention", "HoloBasis", "HoloLinear",
  "HoloTransformerBlock", "HybridHoloBlock", "LowRankAttention",
  "LowRankLinear", "LowRankTransformerBlock", "SineActivation",
  "equal_param_rank", "holo_basis", "holo_basis_count", "holo_param_count",
  "lowrank_param_count", "WindowAttention", "WindowCache",
]
