"""The baseline: a decoder-only transformer in Flax NNX.

Pre-norm (RMSNorm) blocks, rotary position embeddings, causal attention
through :func:`jax.nn.dot_product_attention` (cuDNN flash attention on GPU
when the dtype allows), a GELU MLP and tied input/output embeddings.
Called as every model is (:mod:`holojax.models.lm`): ``model(input_ids)``
-> logits float32[B, T, V]; ``model(input_ids, labels)`` -> ``CausalLMOutput``.

For an input x [B, T, D] each block computes

  h = x + Wo . Attn(RoPE(Wq n(x)), RoPE(Wk n(x)), Wv n(x))
  y = h + W2 . gelu(W1 n(h))

with n = RMSNorm. Logits are n(y) E^T (E the embedding table), in float32.

Example::

  >>> from flax import nnx
  >>> import jax.numpy as jnp
  >>> model = GPT(PRESETS["tiny"], rngs=nnx.Rngs(0))
  >>> model(jnp.zeros((2, 16), jnp.int32)).shape
  (2, 16, 256)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from holojax.models.lm import (DTYPES, check_dtypes, check_input_ids, check_positive_ints,
                               lm_output)
from holojax.nn.embed import Embed, rope


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Sizes of a :class:`GPT`.

  ``dtype`` is the compute dtype (``"bfloat16"`` for mixed precision);
  parameters are always stored in ``param_dtype`` (float32 by default).
  ``attention`` picks the :func:`jax.nn.dot_product_attention`
  implementation: ``None`` means cuDNN flash attention on GPU with bf16
  compute and XLA otherwise (JAX's own default is XLA, measured 1.7x slower
  for gpt2-124m training on an H100), ``"cudnn"`` or ``"xla"`` force one.
  """
  vocab_size: int = 256
  hidden_size: int = 128
  num_hidden_layers: int = 4
  num_heads: int = 4
  intermediate_size: int = 512
  max_seq_len: int = 256
  rope_base: float = 10_000.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention: str | None = None
  norm_eps: float = 1e-6

  def __post_init__(self):
    check_positive_ints(self, "vocab_size", "hidden_size", "num_hidden_layers", "num_heads",
                        "intermediate_size", "max_seq_len")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of "
                       f"num_heads={self.num_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head dim hidden_size/num_heads={self.head_dim} must be even "
                       "(RoPE rotates pairs)")
    check_dtypes(self)
    if self.attention not in (None, "xla", "cudnn"):
      raise ValueError(f"attention must be None, 'xla' or 'cudnn', got {self.attention!r}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def num_params(self) -> int:
    """Parameter count by formula (tied embeddings)."""
    d, f = self.hidden_size, self.intermediate_size
    per_layer = 4 * d * d + 2 * d * f + 2 * d
    return self.vocab_size * d + self.num_hidden_layers * per_layer + d

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (matmuls, fwd+bwd) + 12 L T D (attention)."""
    d, n_layers = self.hidden_size, self.num_hidden_layers
    n_matmul = self.num_params() - n_layers * 2 * d - d
    return 6.0 * n_matmul + 12.0 * n_layers * seq_len * d


PRESETS: dict[str, GPTConfig] = {
    # Unit tests: compiles in about a second.
    "tiny": GPTConfig(hidden_size=32, num_hidden_layers=2, num_heads=2, intermediate_size=64,
                      max_seq_len=64),
    # A few minutes of CPU training reach ~1.6 nats/byte on the stdlib corpus.
    "small": GPTConfig(hidden_size=128, num_hidden_layers=4, num_heads=4, intermediate_size=512,
                       max_seq_len=256),
    # GPT-2 small sizes (124M parameters with GPT-2's padded vocabulary, so
    # optimizer-state tables match the usual 124M tree); GPU, bf16 compute.
    "gpt2-124m": GPTConfig(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_heads=12,
                           intermediate_size=3072, max_seq_len=1024, dtype="bfloat16"),
}



class RMSNorm(nnx.Module):
  def __init__(self, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs):
    del rngs
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x_btd):
    x32 = x_btd.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    scale = self.scale[...].astype(jnp.float32).reshape((1,) * (x_btd.ndim - 1) + (-1,))
    return (y * scale).astype(x_btd.dtype)


def _attention_impl(cfg: GPTConfig) -> str | None:
  if cfg.attention is not None:
    return cfg.attention
  if jax.default_backend() == "gpu" and cfg.dtype == "bfloat16":
    return "cudnn"
  return None


def _dense(d_in, d_out, cfg: GPTConfig, rngs, std=None):
  std = std if std is not None else 1.0 / math.sqrt(d_in)
  return nnx.Linear(d_in, d_out, use_bias=False, dtype=DTYPES[cfg.dtype],
                    param_dtype=DTYPES[cfg.param_dtype],
                    kernel_init=nnx.initializers.normal(std), rngs=rngs)


class Block(nnx.Module):
  """One pre-norm transformer block."""

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    d = cfg.hidden_size
    out_std = 1.0 / math.sqrt(2 * cfg.num_hidden_layers * d)  # residual branches start small
    pdt = DTYPES[cfg.param_dtype]
    self.cfg = cfg
    self.norm_attn = RMSNorm(d, eps=cfg.norm_eps, param_dtype=pdt, rngs=rngs)
    self.wqkv = _dense(d, 3 * d, cfg, rngs)
    self.wo = _dense(d, d, cfg, rngs, std=out_std)
    self.norm_mlp = RMSNorm(d, eps=cfg.norm_eps, param_dtype=pdt, rngs=rngs)
    self.w1 = _dense(d, cfg.intermediate_size, cfg, rngs)
    self.w2 = _dense(cfg.intermediate_size, d, cfg, rngs, std=out_std)

  def __call__(self, x_btd, positions_t):
    cfg = self.cfg
    b, t, d = x_btd.shape
    qkv = self.wqkv(self.norm_attn(x_btd)).reshape(b, t, 3, cfg.num_heads, cfg.head_dim)
    q_bthk, k_bthk, v_bthk = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q_bthk = rope(q_bthk, positions_t, cfg.rope_base)
    k_bthk = rope(k_bthk, positions_t, cfg.rope_base)
    attn_bthk = jax.nn.dot_product_attention(q_bthk, k_bthk, v_bthk, is_causal=True,
                                             implementation=_attention_impl(cfg))
    x_btd = x_btd + self.wo(attn_bthk.reshape(b, t, d))
    return x_btd + self.w2(jax.nn.gelu(self.w1(self.norm_mlp(x_btd))))


class GPT(nnx.Module):
  """Decoder-only transformer, called by the :mod:`holojax.models.lm` contract.

  ``model(input_ids int32[B, T])`` -> logits float32[B, T, V]; given
  ``labels``, ``CausalLMOutput(logits, loss)``.
  """

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    cfg = config
    self.config = cfg
    self.embed = Embed(cfg.vocab_size, cfg.hidden_size, dtype=DTYPES[cfg.dtype],
                       param_dtype=DTYPES[cfg.param_dtype],
                       embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
    self.norm_out = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps,
                            param_dtype=DTYPES[cfg.param_dtype], rngs=rngs)

  def __call__(self, input_ids: jax.Array, labels: jax.Array | None = None):
    tokens_bt = check_input_ids(input_ids, self.config.max_seq_len,
                                self.config.vocab_size)
    positions_t = jnp.arange(tokens_bt.shape[1])
    x_btd = self.embed(tokens_bt)
    for block in self.blocks:
      x_btd = block(x_btd, positions_t)
    x_btd = self.norm_out(x_btd)
    return lm_output(self.embed.attend(x_btd).astype(jnp.float32), labels)
