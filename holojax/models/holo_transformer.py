"""Holo-Transformer (LongAttention): a causal LM whose attention is phasor memory.

Pre-norm blocks, h <- h + PhasorAttention(norm(h)); h <- h + MLP(norm(h))
(the seed's "MLP denoising": the MLP cleans up the memory's cross-talk).
Training runs the parallel form (associative_scan or the Pallas kernel);
decoding runs the recurrence with O(hd_dim) state per layer, whatever the
context length.

Two call styles:

* ``model(input_ids, labels=None)`` -> ``CausalLMOutput(logits, loss)``, HF
  style: labels are aligned with input_ids and shifted inside (logits at t
  predict labels at t + 1); ``ignore_index`` (-100) positions are skipped.
* ``model.logits_only(tokens_bt)`` -> float32[B, T, V], the generic training
  loop's contract ``f(tokens) -> logits``.

Example:
  >>> cfg = HOLO_PRESETS["tiny"]
  >>> model = HoloForCausalLM(cfg, rngs=nnx.Rngs(0))
  >>> ids = jnp.zeros((2, 8), jnp.int32)
  >>> out = model(ids, labels=ids)
  >>> out.logits.shape, out.loss.shape
  ((2, 8, 512), ())
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from holojax.nn.embed import Embed

from holojax.nn.phasor import PhasorAttention, PhasorCache

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class HoloConfig:
  """Holo-Transformer hyperparameters (JSON-serializable via asdict).

  ``hd_dim`` is the total phasor width (split over ``num_heads``); the seed
  uses hd_dim = 2 * hidden_size "for capacity". ``mode``: "content" (content
  key/query phases + learned-bandwidth random-Fourier positions) or
  "positional" (the seed's research build, an ablation). ``write_gate``: a
  learned input gate on writes (no decay). ``dtype``: activation / storage
  dtype ("float32" or "bfloat16"); the memory always accumulates in float32.
  ``implementation``: memory backend, None = the Pallas kernel on GPU (2.5x
  faster than XLA's associative_scan on an H100, fwd+bwd at 16k) and XLA
  elsewhere, or "xla" / "pallas".

  The "tiny" preset trains on MQAR on a CPU in about a minute (see
  tests/models/test_holo_transformer.py); "small" is a ~GPT-2-small shape.
  """

  vocab_size: int = 32000
  hidden_size: int = 1024
  hd_dim: int = 2048
  num_hidden_layers: int = 12
  num_heads: int = 16
  mlp_ratio: float = 4.0
  max_seq_len: int = 4096
  mode: str = "content"
  write_gate: bool = False
  scale: str = "sqrt_t"
  freq_distribution: str = "uniform"
  freq_scale: float = 1.0
  phase_init_scale: float = 1.0
  pos_bandwidth_init: float = -5.0
  tie_embeddings: bool = False
  norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  implementation: str | None = None
  ignore_index: int = -100

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "hd_dim", "num_hidden_layers",
                 "num_heads", "max_seq_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be positive")
    if self.hd_dim % self.num_heads:
      raise ValueError(f"hd_dim={self.hd_dim} must be a multiple of "
                       f"num_heads={self.num_heads}")
    if self.mlp_ratio <= 0:
      raise ValueError(f"mlp_ratio={self.mlp_ratio} must be positive")
    if self.mode not in ("content", "positional"):
      raise ValueError(f"mode={self.mode!r} must be 'content' or "
                       "'positional'")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"{name}={getattr(self, name)!r} must be one of "
                         f"{sorted(_DTYPES)}")
    if self.implementation not in (None, "xla", "pallas"):
      raise ValueError(f"implementation={self.implementation!r} must be "
                       "None, 'xla' or 'pallas'")


HOLO_PRESETS: dict[str, HoloConfig] = {
    "tiny": HoloConfig(vocab_size=512, hidden_size=64, hd_dim=128,
                       num_hidden_layers=2, num_heads=4, mlp_ratio=4.0,
                       max_seq_len=256),
    "small": HoloConfig(vocab_size=32000, hidden_size=768, hd_dim=1536,
                        num_hidden_layers=12, num_heads=12, mlp_ratio=4.0,
                        max_seq_len=4096, dtype="bfloat16"),
}


class CausalLMOutput(NamedTuple):
  """Model output: logits float32[B, T, V]; loss float32[] or None."""

  logits: jax.Array
  loss: jax.Array | None = None


def causal_lm_loss(logits_btv: jax.Array, labels_bt: jax.Array, *,
                   ignore_index: int = -100) -> jax.Array:
  """Mean next-token cross-entropy, HF shift: logits[t] vs labels[t + 1].

  loss = sum_{t: l_{t+1} != ignore} CE(logits_t, l_{t+1}) / #counted
  (0 when nothing is counted).

  Example:
    >>> lg = jnp.zeros((1, 3, 4)); lb = jnp.array([[-100, 1, -100]])
    >>> round(float(causal_lm_loss(lg, lb)), 4)   # log 4
    1.3863
  """
  lg_btv = logits_btv[:, :-1].astype(jnp.float32)
  lb_bt = labels_bt[:, 1:]
  mask_bt = lb_bt != ignore_index
  ce_bt = optax.softmax_cross_entropy_with_integer_labels(
      lg_btv, jnp.where(mask_bt, lb_bt, 0))
  count = jnp.maximum(jnp.sum(mask_bt), 1)
  return jnp.sum(jnp.where(mask_bt, ce_bt, 0.0)) / count


class HoloBlock(nnx.Module):
  """Pre-norm block: phasor memory, then MLP denoising."""

  def __init__(self, config: HoloConfig, *, rngs: nnx.Rngs):
    c = config
    dt, pdt = _DTYPES[c.dtype], _DTYPES[c.param_dtype]
    self.norm1 = nnx.RMSNorm(c.hidden_size, epsilon=c.norm_eps, dtype=dt,
                             param_dtype=pdt, rngs=rngs)
    self.attn = PhasorAttention(
        c.hidden_size, c.num_heads, c.hd_dim, mode=c.mode,
        write_gate=c.write_gate, max_seq_len=c.max_seq_len,
        freq_distribution=c.freq_distribution, freq_scale=c.freq_scale,
        phase_init_scale=c.phase_init_scale,
        pos_bandwidth_init=c.pos_bandwidth_init, scale=c.scale,
        implementation=c.implementation, dtype=dt, param_dtype=pdt,
        rngs=rngs)
    self.norm2 = nnx.RMSNorm(c.hidden_size, epsilon=c.norm_eps, dtype=dt,
                             param_dtype=pdt, rngs=rngs)
    hidden = int(round(c.mlp_ratio * c.hidden_size))
    self.up = nnx.Linear(c.hidden_size, hidden, dtype=dt, param_dtype=pdt,
                         rngs=rngs)
    self.down = nnx.Linear(hidden, c.hidden_size, dtype=dt, param_dtype=pdt,
                           rngs=rngs)

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
  """Holo-Transformer causal LM (see the module docstring for the API)."""

  def __init__(self, config: HoloConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    dt, pdt = _DTYPES[c.dtype], _DTYPES[c.param_dtype]
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

  def _check_ids(self, tokens_bt):
    if tokens_bt.ndim != 2:
      raise ValueError(f"input_ids must be [batch, time], got "
                       f"{tokens_bt.shape}")
    if tokens_bt.shape[1] > self.config.max_seq_len:
      raise ValueError(f"input_ids length {tokens_bt.shape[1]} exceeds "
                       f"max_seq_len={self.config.max_seq_len}")

  def logits_only(self, tokens_bt: jax.Array) -> jax.Array:
    """int32[B, T] -> logits float32[B, T, V] (training-loop contract)."""
    self._check_ids(tokens_bt)
    h_btd = self.embed(tokens_bt)
    for block in self.blocks:
      h_btd = block(h_btd)
    return self._head(h_btd)

  def __call__(self, input_ids: jax.Array, labels: jax.Array | None = None
               ) -> CausalLMOutput:
    """Logits and, given labels aligned with input_ids, the shifted loss."""
    if labels is not None and labels.shape != input_ids.shape:
      raise ValueError(f"labels shape {labels.shape} must equal input_ids "
                       f"shape {input_ids.shape}")
    logits_btv = self.logits_only(input_ids)
    loss = None
    if labels is not None:
      loss = causal_lm_loss(logits_btv, labels,
                            ignore_index=self.config.ignore_index)
    return CausalLMOutput(logits_btv, loss)

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
    self._check_ids(tokens_bt)
    h_btd = self.embed(tokens_bt)
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
