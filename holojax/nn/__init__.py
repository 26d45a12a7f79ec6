"""Flax NNX layers of holojax."""

from holojax.nn.holo import (
  DenseAttention, HoloAttention, HoloBasis, HoloLinear, HoloTransformerBlock,
  HybridHoloBlock, LowRankAttention, LowRankLinear, LowRankTransformerBlock,
  SineActivation, equal_param_rank, holo_basis, holo_basis_count,
  holo_param_count, lowrank_param_count)

__all__ = [
  "DenseAttention", "HoloAttention", "HoloBasis", "HoloLinear",
  "HoloTransformerBlock", "HybridHoloBlock", "LowRankAttention",
  "LowRankLinear", "LowRankTransformerBlock", "SineActivation",
  "equal_param_rank", "holo_basis", "holo_basis_count", "holo_param_count",
  "lowrank_param_count",
]
