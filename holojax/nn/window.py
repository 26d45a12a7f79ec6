"""Exact softmax attention over the last W tokens, beside a long memory (Based's window).

Per head, with a learned bias per head and offset:

  y_t = sum_{t-W < s <= t} softmax_s(q_t . R(t - s) k_s / sqrt(d) + b_h[t - s]) v_s

where R(t - s) is the identity, or with ``rope=True`` the rotary embedding's
turn by the offset (``holojax.nn.embed.rope``). Only offsets < W are ever
turned, in training and in decoding alike, so a million-token decode needs no
large angles.

The parallel form works in blocks of W queries, each against its own block and
the one before (O(T W) time and memory, never [T, T]); decoding keeps the last
W keys and values in a ring buffer (O(W) state per layer, whatever the
context). ``PhasorAttention(window=W)`` adds it to the phasor memory's output.

The output projection starts at zero, so a model gains the window without
changing its output at initialisation.

Example:
  >>> layer = WindowAttention(16, 2, 4, rngs=nnx.Rngs(0))
  >>> layer.out.kernel[...] = jax.random.normal(jax.random.key(2), (16, 16))
  >>> x = jax.random.normal(jax.random.key(1), (1, 6, 16))
  >>> y, cache = layer.prefill(x[:, :5])
  >>> y6, _ = layer.step(x[:, 5], cache, jnp.asarray(5))
  >>> bool(jnp.allclose(y6, layer(x)[:, 5], atol=1e-4))
  True
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from holojax.nn.embed import rope as rotate


class WindowCache(NamedTuple):
  """The last W keys and values (a ring buffer: token t in slot t mod W)."""

  k_bwhd: jax.Array
  v_bwhd: jax.Array
  pos_w: jax.Array  # int32[W]: the position held by each slot, -1 when empty


class WindowAttention(nnx.Module):
  """Causal softmax attention over a sliding window of ``window`` tokens (module docstring)."""

  def __init__(self, dim: int, heads: int, window: int, *, rope: bool = False,
               rope_base: float = 10_000.0, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    for name, value in (("dim", dim), ("heads", heads), ("window", window)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an int >= 1")
    if dim % heads:
      raise ValueError(f"heads={heads} must divide dim={dim}")
    if not isinstance(rope, bool):
      raise TypeError(f"rope={rope!r} must be a bool")
    if rope and (dim // heads) % 2:
      raise ValueError(f"rope=True needs an even head dim, got dim={dim} / heads={heads}")
    if not rope_base > 0:
      raise ValueError(f"rope_base={rope_base!r} must be > 0")
    self.dim, self.heads, self.window, self.dtype = dim, heads, window, dtype
    self.rope, self.rope_base = rope, float(rope_base)
    self.head_dim = dim // heads
    lin = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = nnx.Linear(dim, 3 * dim, **lin)
    self.out = nnx.Linear(dim, dim, kernel_init=nnx.initializers.zeros, **lin)  # starts off
    self.bias_hw = nnx.Param(jnp.zeros((heads, window), param_dtype))

  def _qkv(self, x_btd):
    b, t, _ = x_btd.shape
    q, k, v = jnp.split(self.qkv(x_btd.astype(self.dtype)), 3, axis=-1)
    shape = (b, t, self.heads, self.head_dim)
    return q.reshape(shape), k.reshape(shape), v.reshape(shape)

  def _finish(self, y_bthd):
    b, t = y_bthd.shape[:2]
    return self.out(y_bthd.reshape(b, t, self.dim).astype(self.dtype))

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    """Parallel form over [B, T, dim]: blocks of W queries against 2W keys."""
    b, t, _ = x_btd.shape
    w = self.window
    q, k, v = self._qkv(x_btd)
    n = -(-t // w)
    pad = lambda a: jnp.pad(a, ((0, 0), (w, n * w - t), (0, 0), (0, 0)))  # a block before
    kp, vp = pad(k), pad(v)
    q_bnwhd = jnp.pad(q, ((0, 0), (0, n * w - t), (0, 0), (0, 0))).reshape(
        b, n, w, self.heads, self.head_dim)
    idx = jnp.arange(n)[:, None] * w + jnp.arange(2 * w)[None, :]  # [n, 2W] into the padding
    k_bnjhd, v_bnjhd = kp[:, idx], vp[:, idx]
    if self.rope:  # positions within each block's frame: queries W..2W-1, keys 0..2W-1
      frame = lambda a, p: rotate(a.reshape(b * n, *a.shape[2:]), p, self.rope_base).reshape(a.shape)
      q_bnwhd = frame(q_bnwhd, w + jnp.arange(w))
      k_bnjhd = frame(k_bnjhd, jnp.arange(2 * w))
    s = jnp.einsum("bnihd,bnjhd->bnhij", q_bnwhd.astype(jnp.float32),
                   k_bnjhd.astype(jnp.float32)) / jnp.sqrt(self.head_dim)
    delta = (jnp.arange(w)[:, None] + w) - jnp.arange(2 * w)[None, :]  # [W, 2W]: t - s
    key_pos = idx - w  # [n, 2W] the keys' positions (negative: padding)
    ok = (delta >= 0) & (delta < w)
    bias = self.bias_hw[...].astype(jnp.float32)[:, jnp.clip(delta, 0, w - 1)]  # [H, W, 2W]
    s = s + bias[None, None]
    mask = ok[None, None, None] & (key_pos >= 0)[None, :, None, None, :]
    s = jnp.where(mask, s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    y = jnp.einsum("bnhij,bnjhd->bnihd", p, v_bnjhd.astype(jnp.float32))
    return self._finish(y.reshape(b, n * w, self.heads, self.head_dim)[:, :t])

  def init_cache(self, batch: int) -> WindowCache:
    shape = (batch, self.window, self.heads, self.head_dim)
    return WindowCache(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype),
                       jnp.full((self.window,), -1, jnp.int32))

  def prefill(self, x_btd: jax.Array) -> tuple[jax.Array, WindowCache]:
    """The parallel form, and the cache holding the last W tokens."""
    return self(x_btd), self.cache_of(x_btd)

  def cache_of(self, x_btd: jax.Array) -> WindowCache:
    """The decoding cache after reading ``x_btd`` [B, T, dim] (its last W tokens)."""
    t = x_btd.shape[1]
    _, k, v = self._qkv(x_btd)
    cache = self.init_cache(x_btd.shape[0])
    last = jnp.arange(max(t - self.window, 0), t)
    slots = last % self.window
    return WindowCache(cache.k_bwhd.at[:, slots].set(k[:, last].astype(self.dtype)),
                       cache.v_bwhd.at[:, slots].set(v[:, last].astype(self.dtype)),
                       cache.pos_w.at[slots].set(last.astype(jnp.int32)))

  def step(self, x_bd: jax.Array, cache: WindowCache, pos: jax.Array
           ) -> tuple[jax.Array, WindowCache]:
    """Token ``pos`` (int32[]) from x [B, dim]: (y [B, dim], cache)."""
    q, k, v = self._qkv(x_bd[:, None])
    slot = pos % self.window
    cache = WindowCache(cache.k_bwhd.at[:, slot].set(k[:, 0].astype(self.dtype)),
                        cache.v_bwhd.at[:, slot].set(v[:, 0].astype(self.dtype)),
                        cache.pos_w.at[slot].set(pos.astype(jnp.int32)))
    delta_w = pos - cache.pos_w
    ok_w = (cache.pos_w >= 0) & (delta_w < self.window)
    k_bwhd = cache.k_bwhd
    if self.rope:  # the query at offset 0, each key turned back by its offset
      k_bwhd = rotate(k_bwhd, -jnp.where(ok_w, delta_w, 0), self.rope_base)
    s = jnp.einsum("bhd,bwhd->bhw", q[:, 0].astype(jnp.float32),
                   k_bwhd.astype(jnp.float32)) / jnp.sqrt(self.head_dim)
    bias = self.bias_hw[...].astype(jnp.float32)[:, jnp.clip(delta_w, 0, self.window - 1)]
    s = jnp.where(ok_w[None, None], s + bias[None], -jnp.inf)
    y = jnp.einsum("bhw,bwhd->bhd", jax.nn.softmax(s, axis=-1),
                   cache.v_bwhd.astype(jnp.float32))
    return self._finish(y[:, None])[:, 0], cache
