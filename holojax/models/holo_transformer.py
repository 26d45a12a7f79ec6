"""Holo-Transformer (LongAttention): a causal LM whose attention is phasor memory.

Pre-norm blocks, h <- h + PhasorAttention(norm(h)); h <- h + MLP(norm(h))
(the seed's "MLP denoising": the MLP cleans up the memory's cross-talk).
Training runs the parallel form (associative_scan or the Pallas kernel);
decoding runs the recurrence with O(hd_dim) state per layer, whatever the
context length.

Called as every model is (:mod:`holojax.models.lm`): ``model(input_ids)``
-> logits float32[B, T, V]; ``model(input_ids, labels=labels)`` ->
``CausalLMOutput(logits, loss)``, HF style: labels are aligned with
input_ids and shifted inside (logits at t predict labels at t + 1);
``config.ignore_index`` (-100) positions are skipped.

Example:
  >>> cfg = HOLO_PRESETS["tiny"]
  >>> model = HoloForCausalLM(cfg, rngs=nnx.Rngs(0))
  >>> ids = jnp.zeros((2, 8), jnp.int32)
  >>> model(ids).shape
  (2, 8, 512)
  >>> out = model(input_ids=ids, labels=ids)
  >>> out.logits.shape, out.loss.shape
  ((2, 8, 512), ())
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from holojax.kernels.phasor import PhasorBlocks, check_implementation
from holojax.models.lm import (DTYPES, check_dtypes, check_input_ids, check_positive_ints,
                               lm_output)
from holojax.nn.embed import Embed
from holojax.nn.phasor import PhasorAttention, PhasorCache


@dataclasses.dataclass(frozen=True)
class HoloConfig:
  """Holo-Transformer hyperparameters (JSON-serializable via asdict).

  ``hd_dim`` is the total phasor width (split over ``num_heads``); the seed
  uses hd_dim = 2 * hidden_size "for capacity"; ``intermediate_size`` is the
  MLP width (the seed's mlp_ratio 4 is 4 * hidden_size). ``mode``: "content"
  (content key/query phases + learned-bandwidth random-Fourier positions) or
  "positional" (the seed's research build, an ablation). ``write_gate``: a
  learned input gate on writes (no decay). ``window``: exact attention over the
  last ``window`` tokens in every layer, beside the memory (0: none);
  ``window_rope``: that window also rotates queries and keys by their offset
  (RoPE, needs ``window``). ``conv``: a
  short causal convolution of that width on the memory's input (0: none). ``dtype``: activation / storage
  dtype ("float32" or "bfloat16"); the memory always accumulates in float32.
  ``implementation``: memory backend, None = the Pallas kernel on GPU (2.5x
  faster than XLA's associative_scan on an H100, fwd+bwd at 16k) and XLA
  elsewhere, or a name or sequence of names of ``phasor_memory``'s
  backends ("xla", "triton", "interpret", "pallas"). ``blocks``: the Pallas
  kernels' tile sizes (a ``PhasorBlocks``, or its asdict form; None: the
  defaults).

  The "tiny" preset trains on MQAR on a CPU in about a minute (see
  tests/models/test_holo_transformer.py); "small" is a ~GPT-2-small shape.
  """

  vocab_size: int = 32000
  hidden_size: int = 1024
  hd_dim: int = 2048
  num_hidden_layers: int = 12
  num_heads: int = 16
  intermediate_size: int = 4096
  max_seq_len: int = 4096
  mode: str = "content"
  write_gate: bool = False
  window: int = 0
  window_rope: bool = False
  conv: int = 0
  scale: str = "sqrt_t"
  freq_distribution: str = "uniform"
  freq_scale: float = 1.0
  phase_init_scale: float = 1.0
  pos_bandwidth_init: float = -5.0
  tie_embeddings: bool = False
  norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  implementation: str | tuple[str, ...] | None = None
  blocks: PhasorBlocks | None = None
  ignore_index: int = -100

  def __post_init__(self):
    check_positive_ints(self, "vocab_size", "hidden_size", "hd_dim", "num_hidden_layers",
                        "num_heads", "intermediate_size", "max_seq_len")
    if self.hd_dim % self.num_heads:
      raise ValueError(f"hd_dim={self.hd_dim} must be a multiple of "
                       f"num_heads={self.num_heads}")
    for name in ("window", "conv"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}={value!r} must be an int >= 0 (0: none)")
    if not isinstance(self.window_rope, bool):
      raise TypeError(f"window_rope={self.window_rope!r} must be a bool")
    if self.window_rope and not self.window:
      raise ValueError("window_rope=True needs window > 0")
    if self.window_rope and (self.hidden_size // self.num_heads) % 2:
      raise ValueError(f"window_rope=True needs an even hidden_size / num_heads, got "
                       f"{self.hidden_size} / {self.num_heads}")
    if self.mode not in ("content", "positional"):
      raise ValueError(f"mode={self.mode!r} must be 'content' or "
                       "'positional'")
    check_dtypes(self)
    object.__setattr__(self, "implementation",
                       check_implementation(self.implementation))
    if isinstance(self.blocks, dict):  # from JSON (dataclasses.asdict)
      object.__setattr__(self, "blocks", PhasorBlocks(**self.blocks))
    if self.blocks is not None and not isinstance(self.blocks, PhasorBlocks):
      raise ValueError(f"blocks={self.blocks!r} must be a PhasorBlocks, its "
                       "asdict form, or None")


HOLO_PRESETS: dict[str, HoloConfig] = {
    "tiny": HoloConfig(vocab_size=512, hidden_size=64, hd_dim=128,
                       num_hidden_layers=2, num_heads=4, intermediate_size=256,
                       max_seq_len=256),
    "small": HoloConfig(vocab_size=32000, hidden_size=768, hd_dim=1536,
                        num_hidden_layers=12, num_heads=12,
                        intermediate_size=3072, max_seq_len=4096,
                        dtype="bfloat16"),
}


class HoloBlock(nnx.Module):
  """Pre-norm block: phasor memory, then MLP denoising."""

  def __init__(self, config: HoloConfig, *, rngs: nnx.Rngs):
    c = config
    dt, pdt = DTYPES[c.dtype], DTYPES[c.param_dtype]
    self.norm1 = nnx.RMSNorm(c.hidden_size, epsilon=c.norm_eps, dtype=dt,
                             param_dtype=pdt, rngs=rngs)
    self.attn = PhasorAttention(
        c.hidden_size, c.num_heads, c.hd_dim, mode=c.mode,
        write_gate=c.write_gate, window=c.window,
        window_rope=c.window_rope, conv=c.conv, max_seq_len=c.max_seq_len,
        freq_distribution=c.freq_distribution, freq_scale=c.freq_scale,
        phase_init_scale=c.phase_init_scale,
        pos_bandwidth_init=c.pos_bandwidth_init, scale=c.scale,
        implementation=c.implementation, blocks=c.blocks, dtype=dt,
        param_dtype=pdt, rngs=rngs)
    self.norm2 = nnx.RMSNorm(c.hidden_size, epsilon=c.norm_eps, dtype=dt,
                             param_dtype=pdt, rngs=rngs)
    self.up = nnx.Linear(c.hidden_size, c.intermediate_size, dtype=dt,
                         param_dtype=pdt, rngs=rngs)
    self.down = nnx.Linear(c.intermediate_size, c.hidden_size, dtype=dt,
                           param_dtype=pdt, rngs=rngs)

  def mlp(self, x):
    return self.down(jax.nn.gelu(self.up(self.norm2(x))))

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    x_btd = x_btd + self.attn(self.norm1(x_btd))
    return x_btd + self.mlp(x_btd)

  def prefill(self, x_btd: jax.Array):
    y_btd, cache = self.attn.prefill(self.norm1(x_btd))
    x_btd = x_btd + y_btd
    return x_btd + self.mlp(x_btd), cache

  def step(self, x_bd: jax.Array, cache: PhasorCache):
    y_bd, cache = self.attn.step(self.norm1(x_bd), cache)
    x_bd = x_bd + y_bd
    return x_bd + self.mlp(x_bd), cache


class HoloForCausalLM(nnx.Module):
  """Holo-Transformer causal LM (the :mod:`holojax.models.lm` contract, plus
  ``prefill`` / ``step`` for recurrent decoding)."""

  def __init__(self, config: HoloConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    dt, pdt = DTYPES[c.dtype], DTYPES[c.param_dtype]
    self.embed = Embed(c.vocab_size, c.hidden_size, dtype=dt,
                           param_dtype=pdt, rngs=rngs)
    self.blocks = nnx.List([HoloBlock(c, rngs=rngs)
                            for _ in range(c.num_hidden_layers)])
    self.norm = nnx.RMSNorm(c.hidden_size, epsilon=c.norm_eps, dtype=dt,
                            param_dtype=pdt, rngs=rngs)
    if not c.tie_embeddings:
      self.lm_head = nnx.Linear(c.hidden_size, c.vocab_size, use_bias=False,
                                dtype=dt, param_dtype=pdt, rngs=rngs)

  def _head(self, h):
    h = self.norm(h)
    if self.config.tie_embeddings:
      return self.embed.attend(h).astype(jnp.float32)
    return self.lm_head(h).astype(jnp.float32)

  def __call__(self, input_ids: jax.Array, labels: jax.Array | None = None):
    """int32[B, T] -> logits float32[B, T, V]; given labels, CausalLMOutput."""
    h_btd = self.embed(check_input_ids(input_ids, self.config.max_seq_len,
                                       self.config.vocab_size))
    for block in self.blocks:
      h_btd = block(h_btd)
    return lm_output(self._head(h_btd), labels,
                     ignore_index=self.config.ignore_index)

  def init_cache(self, batch: int, max_len: int | None = None,
                 kind: str = "full") -> tuple[PhasorCache, ...]:
    """Per-layer recurrent state, O(hd_dim) floats per layer and sequence
    (whatever ``max_len``; the decode protocol of ``holojax.models.decoding``,
    whose only ``kind`` here is "full")."""
    if kind != "full":
      raise ValueError(f"cache kind {kind!r}: the phasor model has one state, 'full'")
    return tuple(b.attn.init_cache(batch) for b in self.blocks)

  def prefill(self, tokens_bt: jax.Array, cache=None
              ) -> tuple[jax.Array, tuple[PhasorCache, ...]]:
    """Read a prompt in parallel: (logits float32[B, V] at its last token,
    the per-layer cache after it), equal to ``step`` over every token.
    ``cache`` (the decode protocol's empty cache) is not needed."""
    del cache
    h_btd = self.embed(check_input_ids(tokens_bt, self.config.max_seq_len,
                                       self.config.vocab_size))
    cache = []
    for block in self.blocks:
      h_btd, c = block.prefill(h_btd)
      cache.append(c)
    return self._head(h_btd[:, -1]), tuple(cache)

  def step(self, tokens_b: jax.Array, cache: tuple[PhasorCache, ...]):
    """One decoding step: tokens int32[B] -> (logits float32[B, V], cache)."""
    h_bd = self.embed(tokens_b)
    new = []
    for block, c in zip(self.blocks, cache):
      h_bd, c = block.step(h_bd, c)
      new.append(c)
    return self._head(h_bd), tuple(new)


# Decoding is the shared ``holojax.models.decoding.generate`` (this model implements its
# protocol); importable from here as before.
from holojax.models.decoding import decode_steps, generate  # noqa: E402
