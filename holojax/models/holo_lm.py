"""A small causal byte LM built from HOLO blocks (seed 001), for training.

``HoloLM(config)(input_ids) -> logits_btv`` (the :mod:`holojax.models.lm`
contract; given ``labels``, ``CausalLMOutput``): token embedding plus learned
positions, ``num_hidden_layers`` pre-LN blocks, final LayerNorm, tied output head
(``logits = LN(x) E^T`` with ``E`` the token embedding). Block types:

* ``"holo"``: ``HoloTransformerBlock`` (every projection a ``HoloLinear``);
* ``"hybrid"``: ``HybridHoloBlock`` (dense attention, holo sine MLP);
* ``"lowrank"``: ``LowRankTransformerBlock`` (every projection a
  ``LowRankLinear`` of rank ``config.rank``, or the holo-equal rank).

Layer ``l`` uses basis seeds ``config.basis_seed + 8 l + (0..5)``, so no two
holo projections share a basis.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from holojax.models.lm import check_input_ids, check_positive_ints, lm_output
from holojax.nn.embed import Embed
from holojax.nn.holo import (
  HoloTransformerBlock, HybridHoloBlock, LowRankTransformerBlock)

__all__ = ["HoloLMConfig", "HoloLM", "HOLO_LM_PRESETS"]

BLOCKS = ("holo", "hybrid", "lowrank")


@dataclasses.dataclass(frozen=True)
class HoloLMConfig:
  """Config of ``HoloLM``; every field is JSON-able.

  ``block="holo" | "hybrid" | "lowrank"``; ``rank`` is used by ``"lowrank"``
  only (``None``: per projection, the rank whose parameter count matches a
  ``HoloLinear`` with ``harmonics``). ``omega`` is the sine frequency of the
  MLP activation; ``intermediate_size`` (the MLP width) must be a multiple
  of ``hidden_size`` (the HOLO blocks take the ratio). Presets: ``*-tiny``
  (d 32, 2 layers, H 8, T 64) for tests; ``*-small`` (d 128, 4 layers, H 32,
  T 128) trains on CPU in minutes. Measured once (2 shared CPU cores, jax 0.10.2; adamw 3e-3, batch
  16 x 128 bytes of CPython stdlib source, 300 steps, about 2.5 min each):
  held-out loss 2.26 (hybrid, 477k params), 2.32 (holo, 346k), 2.31
  (lowrank, 344k) nats/byte, from 5.9 at init (uniform: 5.55).
  """

  vocab_size: int = 256
  hidden_size: int = 128
  num_hidden_layers: int = 4
  num_heads: int = 4
  intermediate_size: int = 512
  max_seq_len: int = 256
  harmonics: int = 32
  block: str = "holo"
  rank: int | None = None
  omega: float = 1.0
  basis_seed: int = 0

  def __post_init__(self):
    check_positive_ints(self, "vocab_size", "hidden_size", "num_hidden_layers", "num_heads",
                        "intermediate_size", "max_seq_len", "harmonics")
    if self.hidden_size % self.num_heads:
      raise ValueError(
        f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
    if self.intermediate_size % self.hidden_size:
      raise ValueError(f"intermediate_size={self.intermediate_size} must be a multiple of "
                       f"hidden_size={self.hidden_size}")
    if self.block not in BLOCKS:
      raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
    if self.rank is not None and (
        isinstance(self.rank, bool) or not isinstance(self.rank, int)
        or self.rank < 1):
      raise ValueError(
        f"rank must be None or a positive int, got {self.rank!r}")


def _block(cfg: HoloLMConfig, layer: int, rngs: nnx.Rngs) -> nnx.Module:
  kw = dict(causal=True, mlp_ratio=cfg.intermediate_size // cfg.hidden_size,
            omega=cfg.omega, rngs=rngs)
  seed = cfg.basis_seed + 8 * layer
  if cfg.block == "holo":
    return HoloTransformerBlock(cfg.hidden_size, cfg.num_heads, cfg.harmonics,
                                basis_seed=seed, **kw)
  if cfg.block == "hybrid":
    return HybridHoloBlock(cfg.hidden_size, cfg.num_heads, cfg.harmonics,
                           basis_seed=seed, **kw)
  return LowRankTransformerBlock(cfg.hidden_size, cfg.num_heads, cfg.rank,
                                 harmonics=cfg.harmonics, **kw)


class HoloLM(nnx.Module):
  """Causal LM: ``logits_btv = head(LN(blocks(E[tok] + P[pos])))``, tied head.

  Args:
    config: a ``HoloLMConfig``.
    rngs: parameter randomness.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = HoloLM(HOLO_LM_PRESETS["hybrid-tiny"], rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 8), jnp.int32)).shape
    (2, 8, 256)
  """

  def __init__(self, config: HoloLMConfig, *, rngs: nnx.Rngs):
    self.config = config
    d = config.hidden_size
    init = nnx.initializers.normal(stddev=d ** -0.5)
    self.tok_embed = Embed(config.vocab_size, d, embedding_init=init,
                               rngs=rngs)
    self.pos_embed = nnx.Embed(config.max_seq_len, d,
                               embedding_init=nnx.initializers.normal(0.02),
                               rngs=rngs)
    self.blocks = nnx.List([_block(config, l, rngs)
                            for l in range(config.num_hidden_layers)])
    self.ln_f = nnx.LayerNorm(d, rngs=rngs)

  def __call__(self, input_ids: jax.Array, labels: jax.Array | None = None):
    tokens_bt = check_input_ids(input_ids, self.config.max_seq_len,
                                self.config.vocab_size)
    t = tokens_bt.shape[1]
    x_btd = self.tok_embed(tokens_bt) + self.pos_embed(jnp.arange(t))[None]
    for blk in self.blocks:
      x_btd = blk(x_btd)
    return lm_output(self.tok_embed.attend(self.ln_f(x_btd)).astype(jnp.float32), labels)


def _presets() -> dict[str, HoloLMConfig]:
  out = {}
  for block in BLOCKS:
    out[f"{block}-tiny"] = HoloLMConfig(
      hidden_size=32, num_hidden_layers=2, num_heads=2, intermediate_size=128,
      max_seq_len=64, harmonics=8, block=block)
    out[f"{block}-small"] = HoloLMConfig(
      hidden_size=128, num_hidden_layers=4, num_heads=4, intermediate_size=512,
      max_seq_len=128, harmonics=32, block=block)
  return out


HOLO_LM_PRESETS: dict[str, HoloLMConfig] = _presets()
