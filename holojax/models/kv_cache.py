"""Key/value caches for decoding, one interface for every kind.

A cache kind is a NamedTuple of arrays (so ``tree_bytes`` counts it and jit
carries it) with three methods, all with static shapes:

* ``write(k_btgk, v_btgk, p) -> cache``: store T new keys/values (RoPE
  already applied to keys) at positions p .. p + T - 1;
* ``read(p) -> (k_bsgk, v_bsgk, pos_s)``: everything stored, as attention
  sees it (dequantised), with the position of each slot (-1: empty);
* ``visible(q_pos_t, k_pos_s) -> bool[T, S]``: which keys a query may see;
* ``capacity``: how many tokens it can take (None: any number).

``causal_only`` says whether ``visible`` is plain causal masking (then a
fresh prefill may use a fused causal kernel). Kinds:

* ``"full"``: keys and values in the model's dtype (bf16 on GPU).
* ``"int8"`` / ``"int4"``: KIVI (Liu et al. 2024): keys quantised per channel
  over groups of ``group`` tokens, values per token, asymmetric,
  x ~ q * scale + min with q in [0, 2^bits), scale and min in the model's
  dtype; int4 codes are packed two per byte. The current, unfinished key
  group stays in full precision (KIVI's residual) until its last token
  arrives. Attention dequantises inside the same jitted step.
* ``"window"``: StreamingLLM (Xiao et al. 2024): the first ``sinks`` tokens
  and the ``window`` tokens before each query, in a ring buffer of
  sinks + window slots. Keys keep their original positions (RoPE applied
  before caching), so generation stays within the model's context.
* ``"holokv"``: ``k`` consecutive tokens superposed in one slot with +-1
  codes, N / k slots (:mod:`holojax.models.holokv`; ``read`` "joint" or the
  seed's "faithful", ``implementation`` the decode op's backend). It brings
  its own ``attend`` instead of ``read`` / ``visible``.

``attend(cache, q, k, v, p, fresh=..., implementation=...)`` is the one
attention-through-a-cache every model calls.

Why not ``qwix``: its ``quantize``/``dequantize`` compute the same codes, but
int4 codes live one per byte (``jnp.int4``, itemsize 1), so the bytes would be
misreported unless we pack nibbles ourselves, and a streaming cache needs
writes of token groups into preallocated buffers, which ``QArray`` does not
offer; what is left is the 10 lines of min/max arithmetic below.

Example:
  >>> c = CacheSpec("int4").init(1, 64, 2, 16, jnp.float32)
  >>> k = jax.random.normal(jax.random.key(0), (1, 40, 2, 16))
  >>> c = c.write(k, k, 0)
  >>> k_hat, _, pos = c.read(40)
  >>> bool(jnp.abs(k_hat[:, :40] - k).max() < 0.5), int(pos[39])
  (True, 39)
  >>> CacheSpec("int4").bytes_per_token(2, 64, jnp.bfloat16)  # per layer; "full": 512
  152.0
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from holojax.models import holokv

KINDS = ("full", "int8", "int4", "window", "holokv")


@dataclasses.dataclass(frozen=True)
class CacheSpec:
  """A cache kind and its settings.

  ``group``: tokens per key-scale group (int8/int4); ``sinks`` and
  ``window``: tokens kept by ``"window"`` (``sinks`` also: the leading tokens
  ``"holokv"`` keeps exact, rounded up to whole groups); ``k`` (tokens per slot, 1, 2, 4
  or 8), ``read`` ("joint" or "faithful"), ``center`` (subtract the first
  write's mean key and value) and ``implementation`` (the decode op's
  backend, :mod:`holojax.kernels.holokv`): ``"holokv"``.
  """

  kind: str = "full"
  group: int = 32
  sinks: int = 4
  window: int = 1024
  k: int = 4
  read: str = "joint"
  center: bool = False
  implementation: str | tuple[str, ...] | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind={self.kind!r} must be one of {KINDS}")
    if self.group < 1 or self.window < 1 or self.sinks < 0:
      raise ValueError(f"group={self.group} and window={self.window} must be >= 1, "
                       f"sinks={self.sinks} >= 0")
    holokv.check_k(self.k)
    holokv.cache_class(self.read, center=self.center)  # validates read and center
    if isinstance(self.implementation, list):
      object.__setattr__(self, "implementation", tuple(self.implementation))

  def init(self, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype):
    """An empty cache of this kind for ``max_len`` tokens."""
    if self.kind == "full":
      return FullCache.init(batch, max_len, kv_heads, head_dim, dtype)
    if self.kind == "window":
      return WindowCache.init(batch, self.sinks, self.window, kv_heads, head_dim, dtype)
    if self.kind == "holokv":
      cls = holokv.cache_class(self.read, self.implementation, center=self.center)
      return cls.init(batch, max_len, kv_heads, head_dim, dtype, k=self.k, sinks=self.sinks)
    return QuantCache.init(batch, max_len, kv_heads, head_dim, dtype,
                           bits=8 if self.kind == "int8" else 4, group=self.group)

  def bytes_per_token(self, kv_heads: int, head_dim: int, dtype) -> float:
    """Bytes one more cached token costs in one layer (``"window"``: the cost of
    a token while the window fills; a full window costs nothing more)."""
    item = np.dtype(dtype).itemsize
    if self.kind in ("full", "window"):
      return 2.0 * kv_heads * head_dim * item
    if self.kind == "holokv":
      return 2.0 * kv_heads * head_dim * item / self.k
    bits = 8 if self.kind == "int8" else 4
    codes = 2 * head_dim * bits / 8                    # keys + values
    scales = 2 * head_dim * item / self.group + 2 * item  # key (per channel), value (per token)
    return kv_heads * (codes + scales)


def attend(cache, q_bthd, k_btgd, v_btgd, p, *, fresh: bool, implementation=None):
  """T new tokens at positions p.. attend to the cache and each other:
  (output [B, T, H, K], the cache with them written).

  The new tokens see what the cache held before (as its kind reads it back:
  dequantised, windowed) and each other in the compute dtype; ``fresh``
  (the cache is empty) skips reading it. ``implementation`` is
  ``jax.nn.dot_product_attention``'s. A kind with its own ``attend``
  (``"holokv"``) does all of this itself.
  """
  if hasattr(cache, "attend"):
    return cache.attend(q_bthd, k_btgd, v_btgd, p)
  t = q_bthd.shape[1]
  q_pos_t = p + jnp.arange(t, dtype=jnp.int32)
  if fresh and cache.causal_only:
    out = jax.nn.dot_product_attention(q_bthd, k_btgd, v_btgd, is_causal=True,
                                       implementation=implementation)
    return out, cache.write(k_btgd, v_btgd, p)
  if fresh:
    k_all, v_all, k_pos_s = k_btgd, v_btgd, q_pos_t
  else:
    k_old, v_old, pos_old = cache.read(p)
    k_all = jnp.concatenate([k_old.astype(k_btgd.dtype), k_btgd], axis=1)
    v_all = jnp.concatenate([v_old.astype(v_btgd.dtype), v_btgd], axis=1)
    k_pos_s = jnp.concatenate([jnp.where(pos_old < p, pos_old, -1), q_pos_t])
  mask_ts = cache.visible(q_pos_t, k_pos_s)
  out = jax.nn.dot_product_attention(q_bthd, k_all, v_all, mask=mask_ts[None, None])
  return out, cache.write(k_btgd, v_btgd, p)


def as_spec(kind) -> CacheSpec:
  """A ``CacheSpec`` from a kind name or a spec."""
  if isinstance(kind, CacheSpec):
    return kind
  if isinstance(kind, str):
    return CacheSpec(kind)
  raise ValueError(f"cache must be one of {KINDS} or a CacheSpec, got {kind!r}")


def _causal(q_pos_t, k_pos_s):
  return (k_pos_s[None, :] >= 0) & (k_pos_s[None, :] <= q_pos_t[:, None])


class FullCache(NamedTuple):
  """Keys and values as computed: k, v [B, S, Hkv, K] in the model's dtype."""

  k: jax.Array
  v: jax.Array

  causal_only = True

  @classmethod
  def init(cls, batch, max_len, kv_heads, head_dim, dtype):
    z = jnp.zeros((batch, max_len, kv_heads, head_dim), dtype)
    return cls(z, z)

  def write(self, k_btgk, v_btgk, p):
    at = (0, p, 0, 0)
    return FullCache(jax.lax.dynamic_update_slice(self.k, k_btgk.astype(self.k.dtype), at),
                     jax.lax.dynamic_update_slice(self.v, v_btgk.astype(self.v.dtype), at))

  def read(self, p):
    del p
    return self.k, self.v, jnp.arange(self.k.shape[1], dtype=jnp.int32)

  @property
  def capacity(self) -> int:
    return self.k.shape[1]

  def visible(self, q_pos_t, k_pos_s):
    return _causal(q_pos_t, k_pos_s)


def quantize(x, bits: int, axis: int, dtype):
  """Asymmetric min/max codes along ``axis``: (q uint8, scale, min), x ~ q * scale + min.

  scale and min are rounded to ``dtype`` first, so the codes fit what is stored.
  """
  levels = 2 ** bits - 1
  x = x.astype(jnp.float32)
  mn = jnp.min(x, axis=axis, keepdims=True).astype(dtype)
  mx = jnp.max(x, axis=axis, keepdims=True)
  scale = ((mx - mn.astype(jnp.float32)) / levels).astype(dtype)
  s32 = jnp.where(scale > 0, scale.astype(jnp.float32), 1.0)
  q = jnp.clip(jnp.round((x - mn.astype(jnp.float32)) / s32), 0, levels)
  return q.astype(jnp.uint8), scale, mn


def _pack(q, bits):
  """uint8 codes [..., K] -> [..., K * bits / 8] (int4: two codes a byte)."""
  return q if bits == 8 else q[..., 0::2] | (q[..., 1::2] << 4)


def _unpack(q, bits):
  if bits == 8:
    return q
  lo, hi = q & 15, q >> 4
  return jnp.stack([lo, hi], axis=-1).reshape(*q.shape[:-1], 2 * q.shape[-1])


class QuantCache(NamedTuple):
  """KIVI cache: per-channel key groups, per-token values, a full-precision key residual.

  kq, vq   uint8[B, S, Hkv, K * bits / 8]   packed codes
  k_scale, k_min  [B, S / G, Hkv, K]        per key group and channel
  v_scale, v_min  [B, S, Hkv, 1]            per value token
  k_res    [B, G, Hkv, K]                   the current key group, unquantised
  S is max_len rounded up to a multiple of G.
  """

  kq: jax.Array
  k_scale: jax.Array
  k_min: jax.Array
  k_res: jax.Array
  vq: jax.Array
  v_scale: jax.Array
  v_min: jax.Array

  causal_only = True

  @classmethod
  def init(cls, batch, max_len, kv_heads, head_dim, dtype, *, bits: int, group: int):
    if bits == 4 and head_dim % 2:
      raise ValueError(f"int4 packs pairs of channels: head_dim={head_dim} must be even")
    s = -(-max_len // group) * group
    codes = jnp.zeros((batch, s, kv_heads, head_dim * bits // 8), jnp.uint8)
    kz = jnp.zeros((batch, s // group, kv_heads, head_dim), dtype)
    vz = jnp.zeros((batch, s, kv_heads, 1), dtype)
    return cls(codes, kz, kz, jnp.zeros((batch, group, kv_heads, head_dim), dtype), codes,
               vz, vz)

  @property
  def bits(self) -> int:
    return 8 * self.kq.shape[-1] // self.k_scale.shape[-1]

  @property
  def group(self) -> int:
    return self.k_res.shape[1]

  @property
  def capacity(self) -> int:
    return self.kq.shape[1]

  def write(self, k_btgk, v_btgk, p):
    bits, g = self.bits, self.group
    b, t, h, k = k_btgk.shape
    dt = self.k_scale.dtype
    # Values: every token on its own.
    vq, vs, vm = quantize(v_btgk, bits, -1, dt)
    at = (0, p, 0, 0)
    upd = jax.lax.dynamic_update_slice
    vq_all = upd(self.vq, _pack(vq, bits), at)
    vs_all, vm_all = upd(self.v_scale, vs, at), upd(self.v_min, vm, at)
    # Keys: the groups this write touches (a static count), from the residual
    # and the new keys; unfinished groups are stored too but read from k_res.
    n_g = -(-t // g) + 1
    g0 = p // g
    pos_w = g0 * g + jnp.arange(n_g * g)
    new_w = jnp.take(k_btgk, jnp.clip(pos_w - p, 0, t - 1), axis=1)
    res_w = jnp.take(self.k_res, jnp.clip(pos_w - g0 * g, 0, g - 1), axis=1)
    keep_new = ((pos_w >= p) & (pos_w < p + t))[None, :, None, None]
    keep_res = (pos_w < p)[None, :, None, None]
    win = jnp.where(keep_new, new_w.astype(dt), jnp.where(keep_res, res_w, 0)).astype(dt)
    kq, ks, km = quantize(win.reshape(b, n_g, g, h, k), bits, 2, dt)
    kq_all = self.kq.at[:, pos_w].set(_pack(kq.reshape(b, n_g * g, h, k), bits), mode="drop")
    gidx = g0 + jnp.arange(n_g)
    ks_all = self.k_scale.at[:, gidx].set(ks[:, :, 0], mode="drop")
    km_all = self.k_min.at[:, gidx].set(km[:, :, 0], mode="drop")
    # The new residual: the group holding position p + t, filled up to it.
    g1 = (p + t) // g
    res_pos = g1 * g + jnp.arange(g)
    res = jnp.take(win, jnp.clip(res_pos - g0 * g, 0, n_g * g - 1), axis=1)
    res = jnp.where((res_pos < p + t)[None, :, None, None], res, 0).astype(dt)
    return QuantCache(kq_all, ks_all, km_all, res, vq_all, vs_all, vm_all)

  def read(self, p):
    bits, g = self.bits, self.group
    dt = self.k_scale.dtype
    s = self.kq.shape[1]
    kq = _unpack(self.kq, bits).astype(dt)
    k = kq * jnp.repeat(self.k_scale, g, axis=1) + jnp.repeat(self.k_min, g, axis=1)
    k = jax.lax.dynamic_update_slice(k, self.k_res, (0, (p // g) * g, 0, 0))
    v = _unpack(self.vq, bits).astype(dt) * self.v_scale + self.v_min
    return k, v, jnp.arange(s, dtype=jnp.int32)

  def visible(self, q_pos_t, k_pos_s):
    return _causal(q_pos_t, k_pos_s)


class WindowCache(NamedTuple):
  """Attention sinks + sliding window in sinks + window slots.

  k, v [B, W, Hkv, K]; pos int32[W] the position held by each slot (-1:
  empty); sinks int32[] how many leading slots are sinks. Position t lives
  in slot t (t < sinks) or sinks + (t - sinks) mod window.
  """

  k: jax.Array
  v: jax.Array
  pos: jax.Array
  sinks: jax.Array

  causal_only = False

  @classmethod
  def init(cls, batch, sinks, window, kv_heads, head_dim, dtype):
    z = jnp.zeros((batch, sinks + window, kv_heads, head_dim), dtype)
    return cls(z, z, jnp.full((sinks + window,), -1, jnp.int32), jnp.asarray(sinks, jnp.int32))

  capacity = None  # a ring: old tokens leave

  def _window(self):
    return self.k.shape[1] - self.sinks

  def write(self, k_btgk, v_btgk, p):
    t = k_btgk.shape[1]
    w = self._window()
    pos_t = p + jnp.arange(t, dtype=jnp.int32)
    slot = jnp.where(pos_t < self.sinks, pos_t, self.sinks + (pos_t - self.sinks) % w)
    # A token that a later one of this write evicts is not written (no
    # duplicate scatter indices).
    slot = jnp.where((pos_t >= self.sinks) & (pos_t < p + t - w), self.k.shape[1], slot)
    return WindowCache(self.k.at[:, slot].set(k_btgk.astype(self.k.dtype), mode="drop"),
                       self.v.at[:, slot].set(v_btgk.astype(self.v.dtype), mode="drop"),
                       self.pos.at[slot].set(pos_t, mode="drop"), self.sinks)

  def read(self, p):
    del p
    return self.k, self.v, self.pos

  def visible(self, q_pos_t, k_pos_s):
    """Causal, and a key is a sink or at most ``window`` tokens before the query."""
    near = q_pos_t[:, None] - k_pos_s[None, :] <= self._window()
    return _causal(q_pos_t, k_pos_s) & ((k_pos_s[None, :] < self.sinks) | near)
