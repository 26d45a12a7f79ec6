"""Phasor (FHRR) memory: decay-free complex superposition in place of attention.

The memory of Holo-Transformer / LongAttention (SPEC section 4). A value
``v_s`` is *bound* to a key phase ``k_s`` by rotation, ``v_s e^{i k_s}``; the
memory is the running sum of bound items (no decay); a read *unbinds* with the
conjugate of the query phase and keeps the real part:

  S_t = sum_{s<=t} v_s e^{i k_s}                (complex, per head and dim)
  y_t = Re(S_t e^{-i q_t}) / sqrt(t + 1)        ("sqrt_t" scaling)
      = sum_{s<=t} v_s cos(k_s - q_t) / sqrt(t + 1).

Everything is element-wise over the hd dimension of a head: one dimension is
one scalar holographic memory; the capacity comes from reading all dimensions
of a head together (the output projection, or a clean-up by inner product).
With N stored items, D dimensions and M candidate values, top-1 retrieval
succeeds with probability p = int phi(h - s) Phi(h)^(M-1) dh, s = sqrt(2D/N)
(Frady, Kleyko & Sommer 2017); see ``recall_probability``.

Storage may be bfloat16; phases, the running sum and the read are float32.

References:
  Plate, "Holographic Reduced Representations", 1995 (FHRR).
  Frady, Kleyko & Sommer, "A theory of sequence indexing and working memory
  in recurrent neural networks", Neural Computation 2018 (arXiv:1803.00412).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from holojax.kernels.backend import Implementation
from holojax.kernels.phasor import (PhasorBlocks, bind, check_implementation, phasor_memory,
                                    phasor_memory_reference, read_scale, unbind,
                                    with_positions)
from holojax.nn.window import WindowAttention, WindowCache

__all__ = ["Implementation", "PhasorAttention", "PhasorBlocks", "PhasorCache",
           "PhasorFrequencies", "bind", "generate_random_phasors", "phasor_memory",
           "phasor_memory_reference", "positional_phases", "read_scale",
           "recall_probability", "rope_frequencies", "unbind", "with_positions"]

_TWO_PI = 2.0 * math.pi


# ----------------------------------------------------------------------------
# Phasors, binding.


def generate_random_phasors(key: jax.Array, n: int, d: int, *,
                            distribution: str = "uniform",
                            scale: float = 1.0) -> jax.Array:
  """Random phase angles theta float32[n, d] of the phasors e^{i theta}.

  ``"uniform"``: theta ~ U(-pi, pi) * scale (scale=1 gives FHRR codes, whose
  mean cosine similarity is exactly 0 in expectation and ~1/sqrt(2d) in
  spread). ``"normal"``: theta ~ N(0, scale^2) (the seed's research build drew
  frequencies from N(0, 10^2)).

  As frequencies (rad/token), a row gives random-Fourier positional phasors:
  ``positional_phases(theta[0], t)`` = t * theta (see there).

  Example:
    >>> th = generate_random_phasors(jax.random.key(0), 4, 256)
    >>> th.shape, bool(jnp.all(jnp.abs(th) <= jnp.pi))
    ((4, 256), True)
  """
  if n < 1 or d < 1:
    raise ValueError(f"n={n} and d={d} must be positive")
  if distribution == "uniform":
    u_nd = jax.random.uniform(key, (n, d), jnp.float32, -math.pi, math.pi)
    return u_nd * scale
  if distribution == "normal":
    return jax.random.normal(key, (n, d), jnp.float32) * scale
  raise ValueError(f"distribution={distribution!r} must be 'uniform' or "
                   "'normal'")


def rope_frequencies(d: int, *, base: float = 10000.0) -> jax.Array:
  """RoPE angular frequencies float32[d]: omega_j = base^(-j/d), j < d.

  One frequency per complex dimension (RoPE pairs 2d real dims into d complex
  ones), the geometric ladder the seed replaces with random frequencies.

  Example:
    >>> rope_frequencies(4).shape
    (4,)
  """
  j_d = jnp.arange(d, dtype=jnp.float32)
  return jnp.asarray(base, jnp.float32) ** (-j_d / d)


def positional_phases(freq_d: jax.Array, t: jax.Array) -> jax.Array:
  """Phases (t * freq) mod 2 pi, float32[..., d], exact for integer t < 2^31.

  ``t * freq`` in float32 loses ~0.03 rad at t = 1e5. Here each frequency is
  rounded to a 24-bit fixed-point number of cycles per token, c = round(freq /
  2 pi * 2^24), and the phase is 2 pi * ((t * c) mod 2^24) / 2^24 in integer
  arithmetic (uint32 products wrap mod 2^32, a multiple of 2^24): exact.

  Args:
    freq_d: float32[d] angular frequencies (rad/token).
    t: integer positions of any shape.

  Returns:
    float32[*t.shape, d] in [0, 2 pi).

  Example:
    >>> f_d = jnp.array([0.5, -1.0])
    >>> positional_phases(f_d, jnp.arange(3)).shape
    (3, 2)
  """
  one = 1 << 24
  frac_d = jnp.mod(freq_d.astype(jnp.float32) / _TWO_PI, 1.0)
  cyc_d = jnp.round(frac_d * one).astype(jnp.uint32) % jnp.uint32(one)
  t_u = jnp.asarray(t).astype(jnp.uint32)[..., None]
  cyc = cyc_d.reshape((1,) * (t_u.ndim - 1) + cyc_d.shape)
  turns = (t_u * cyc) % jnp.uint32(one)
  return turns.astype(jnp.float32) * jnp.float32(_TWO_PI / one)


# ----------------------------------------------------------------------------
# The causal memory (bind, unbind, read_scale, with_positions, the reference
# and the public ``phasor_memory``) lives with its kernels in
# ``holojax.kernels.phasor``; imported above and exported here.


# ----------------------------------------------------------------------------
# Capacity theory (numpy, for tests, notebook and benchmarks).


def recall_probability(n_items: int | float, d: int, m: int, *,
                       num: int = 4001) -> float:
  """Top-1 retrieval probability p = int phi(h - s) Phi(h)^(M-1) dh.

  s = sqrt(2 D / N): N stored items, D dims, M candidates (Frady et al.).
  Trapezoid rule on a grid of ``num`` points; numpy and math.erf only.

  Example:
    >>> round(recall_probability(1, 4096, 2), 3)
    1.0
  """
  s = math.sqrt(2.0 * d / n_items)
  h = np.linspace(min(-8.0, s - 8.0), s + 8.0, num)
  pdf = np.exp(-0.5 * (h - s) ** 2) / math.sqrt(2.0 * math.pi)
  erf = np.vectorize(math.erf)
  cdf = 0.5 * (1.0 + erf(h / math.sqrt(2.0)))
  trapezoid = getattr(np, "trapezoid", None) or np.trapz
  return float(trapezoid(pdf * cdf ** (m - 1), h))


# ----------------------------------------------------------------------------
# The layer.


class PhasorFrequencies(nnx.Variable):
  """Fixed random-Fourier frequencies (rad/token); not a trained Param."""


class PhasorCache(NamedTuple):
  """Recurrent state of one ``PhasorAttention``: O(hd_dim) per sequence."""

  s_re: jax.Array    # [B, H, D] float32, Re of the running sum S_t
  s_im: jax.Array    # [B, H, D] float32, Im of S_t
  x_prev: jax.Array  # [B, dim], previous input (key conv); zeros at t=0
  pos: jax.Array     # shape=(), int32, next position t
  win: WindowCache | None = None  # the last W keys/values (``window=W``), O(W)
  x_hist: jax.Array | None = None  # [B, K-1, dim], the last raw inputs (``conv=K``)


class PhasorAttention(nnx.Module):
  """Phasor attention: content-addressed, decay-free holographic memory.

  Per head h and dim d (x_t the input, omega_d random frequencies):

    v_t   = W_v x_t                         (gated: v_t *= sigmoid(w_g x_t))
    k_t   = W_k x_t + W_k' x_{t-1} + lam_h omega_d t     (write phase)
    q_t   = W_q x_t              + lam_h omega_d t       (read phase)
    y_t   = Re(sum_{s<=t} v_s e^{i k_s} e^{-i q_t}) / sqrt(t+1)
    out_t = W_o y_t

  ``mode="content"``: as above. The key sees the previous token too (a
  width-2 causal convolution, the shift of the seed's later
  ``conj k_{s-1}`` build), so "a b ... a" can read b back. The random-Fourier
  positional phasors (replacing RoPE) enter with a learned per-head bandwidth
  lam_h = sigmoid(.) in (0, 1): near 0 the head is position-blind, near 1
  positions are nearly orthogonal (sinc window of width ~1/lam_h).
  ``mode="positional"``: the seed's research build, k_t = q_t = omega t with
  fixed frequencies, a data-independent causal convolution (ablation).
  ``write_gate=True``: a learned sigmoid input gate per head and token on
  writes (not a decay), so filler tokens need not add noise.
  ``conv=K`` (>= 2): a depthwise causal convolution of width K on the
  memory's input, u_t = sum_{j<K} c_j (x) x_{t-j} (H3 / Based's short
  convolution), initialised to the identity (c_0 = 1); values, phases and the
  key's previous-token term then read u instead of x.
  ``window=W`` (> 0): exact softmax attention over the last W tokens
  (``holojax.nn.window``, Based's sliding window) added to the output; its
  output projection starts at zero. Decode state grows by O(W), not with
  the context. ``window_rope=True``: the window's scores also see the
  rotary embedding of each offset (besides its learned per-offset bias).
  ``implementation`` and ``blocks`` go to ``phasor_memory`` (its backend
  and the Pallas kernels' tile sizes).

  Example:
    >>> layer = PhasorAttention(16, 2, 8, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 5, 16))).shape
    (1, 5, 16)
  """

  def __init__(self, dim: int, heads: int, hd_dim: int, *,
               mode: str = "content", write_gate: bool = False,
               window: int = 0, window_rope: bool = False, conv: int = 0,
               max_seq_len: int | None = None,
               freq_distribution: str = "uniform", freq_scale: float = 1.0,
               phase_init_scale: float = 1.0, pos_bandwidth_init: float = -5.0,
               scale: str = "sqrt_t", implementation: Implementation = None,
               blocks: PhasorBlocks | None = None, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if heads < 1 or hd_dim % heads != 0:
      raise ValueError(f"hd_dim={hd_dim} must be a multiple of heads={heads}")
    if mode not in ("content", "positional"):
      raise ValueError(f"mode={mode!r} must be 'content' or 'positional'")
    if max_seq_len is not None and max_seq_len < 1:
      raise ValueError(f"max_seq_len={max_seq_len} must be positive")
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
      raise ValueError(f"window={window!r} must be an int >= 0 (0: no window)")
    if isinstance(conv, bool) or not isinstance(conv, int) or conv < 0:
      raise ValueError(f"conv={conv!r} must be an int >= 0 (0 or 1: no convolution)")
    read_scale(0, scale)
    implementation = check_implementation(implementation)
    if blocks is not None and not isinstance(blocks, PhasorBlocks):
      raise ValueError(f"blocks={blocks!r} must be a PhasorBlocks or None")
    self.dim, self.heads, self.hd_dim = dim, heads, hd_dim
    self.head_dim = hd_dim // heads
    self.mode, self.write_gate, self.max_seq_len = mode, write_gate, max_seq_len
    self.scale, self.implementation, self.dtype = scale, implementation, dtype
    self.blocks = blocks
    lin = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    phase_init = nnx.initializers.variance_scaling(
        phase_init_scale ** 2, "fan_in", "normal")
    self.v_proj = nnx.Linear(dim, hd_dim, use_bias=False, **lin)
    self.o_proj = nnx.Linear(hd_dim, dim, use_bias=False, **lin)
    if mode == "content":
      self.k_proj = nnx.Linear(dim, hd_dim, kernel_init=phase_init, **lin)
      self.k_prev = nnx.Linear(dim, hd_dim, use_bias=False,
                               kernel_init=phase_init, **lin)
      self.q_proj = nnx.Linear(dim, hd_dim, kernel_init=phase_init, **lin)
      self.pos_bandwidth = nnx.Param(
          jnp.full((heads,), pos_bandwidth_init, param_dtype))
    if write_gate:
      self.g_proj = nnx.Linear(dim, heads, **lin)
    self.window, self.conv = window, conv if conv >= 2 else 0
    if self.conv:
      self.conv_kd = nnx.Param(jnp.zeros((self.conv, dim), param_dtype).at[0].set(1.0))
    if window:
      self.window_attn = WindowAttention(dim, heads, window, rope=window_rope, dtype=dtype,
                                         param_dtype=param_dtype, rngs=rngs)
    elif window_rope:
      raise ValueError("window_rope=True needs window > 0")
    freq_hd = generate_random_phasors(
        rngs.params(), heads, self.head_dim, distribution=freq_distribution,
        scale=freq_scale)
    self.freq = PhasorFrequencies(freq_hd)

  def _check_len(self, t: int):
    if self.max_seq_len is not None and t > self.max_seq_len:
      raise ValueError(f"sequence length {t} exceeds max_seq_len="
                       f"{self.max_seq_len}")

  def _phases(self, x_btd, x_prev_btd, t_t):
    """Values v, phases k, q [B, T, H, D] and positional frequencies f.

    Content mode: k, q are the content phases (compute dtype) and f =
    lam_h omega float32[H, D]; the memory adds t f in float32. Positional
    mode: k = q = (omega t) mod 2 pi exactly, f = None.
    """
    b, t = x_btd.shape[:2]
    hd = (b, t, self.heads, self.head_dim)
    v_bthd = self.v_proj(x_btd).reshape(hd)
    if self.write_gate:
      g_bth = jax.nn.sigmoid(self.g_proj(x_btd).astype(jnp.float32))
      v_bthd = (v_bthd * g_bth[..., None]).astype(v_bthd.dtype)
    if self.mode == "positional":
      p_thd = positional_phases(self.freq[...].reshape(-1), t_t)
      p_bthd = jnp.broadcast_to(p_thd.reshape(1, t, self.heads, -1), hd)
      return v_bthd, p_bthd, p_bthd, None
    lam_h = jax.nn.sigmoid(self.pos_bandwidth[...].astype(jnp.float32))
    w_hd = lam_h[:, None] * self.freq[...]
    k_bthd = (self.k_proj(x_btd) + self.k_prev(x_prev_btd)).reshape(hd)
    q_bthd = self.q_proj(x_btd).reshape(hd)
    return v_bthd, k_bthd, q_bthd, w_hd

  def _parallel(self, x_btd):
    """Parallel form: (out [B, T, dim], v, k, f) of a whole sequence."""
    if x_btd.ndim != 3 or x_btd.shape[-1] != self.dim:
      raise ValueError(f"x must be [batch, time, {self.dim}], got "
                       f"{x_btd.shape}")
    b, t, _ = x_btd.shape
    self._check_len(t)
    x_btd = x_btd.astype(self.dtype)
    u_btd = self._conv(x_btd)
    x_prev_btd = jnp.pad(u_btd, ((0, 0), (1, 0), (0, 0)))[:, :-1]
    v, k, q, w_hd = self._phases(u_btd, x_prev_btd, jnp.arange(t))
    y_bthd = phasor_memory(v, k, q, freq_hd=w_hd, scale=self.scale,
                           implementation=self.implementation,
                           blocks=self.blocks)
    out = self.o_proj(y_bthd.reshape(b, t, self.hd_dim).astype(self.dtype))
    if self.window:
      out = out + self.window_attn(x_btd)
    return out, v, k, w_hd

  def _conv(self, x_btd):
    """u_t = sum_j c_j (x) x_{t-j} over [B, T, dim] (x itself without ``conv``)."""
    if not self.conv:
      return x_btd
    c_kd = self.conv_kd[...].astype(jnp.float32)
    t = x_btd.shape[1]
    xp = jnp.pad(x_btd.astype(jnp.float32), ((0, 0), (self.conv - 1, 0), (0, 0)))
    u = sum(c_kd[j][None, None] * xp[:, self.conv - 1 - j:self.conv - 1 - j + t]
            for j in range(self.conv))
    return u.astype(self.dtype)

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    """Parallel (training) form over a whole sequence [B, T, dim]."""
    return self._parallel(x_btd)[0]

  def prefill(self, x_btd: jax.Array) -> tuple[jax.Array, PhasorCache]:
    """Parallel form plus the recurrent state after the sequence.

    S_T = sum_t v_t e^{i k'_t} is one reduction over T, so a prompt of any
    length is read at the parallel kernel's speed and decoding continues
    from the returned cache with ``step``.

    Example:
      >>> layer = PhasorAttention(16, 2, 8, rngs=nnx.Rngs(0))
      >>> y, cache = layer.prefill(jnp.ones((1, 5, 16)))
      >>> y.shape, int(cache.pos)
      ((1, 5, 16), 5)
    """
    y_btd, v, k, w_hd = self._parallel(x_btd)
    t = x_btd.shape[1]
    s_bhd = jnp.sum(bind(v, with_positions(k, w_hd, jnp.arange(t))), axis=1)
    x_btd = x_btd.astype(self.dtype)
    hist = None
    if self.conv:  # the last K-1 raw inputs, zeros before the start
      hist = jnp.pad(x_btd, ((0, 0), (self.conv - 1, 0), (0, 0)))[:, -(self.conv - 1):]
    cache = PhasorCache(s_bhd.real, s_bhd.imag,
                        self._conv(x_btd)[:, -1],
                        jnp.asarray(t, jnp.int32),
                        self.window_attn.cache_of(x_btd) if self.window else None, hist)
    return y_btd, cache

  def init_cache(self, batch: int) -> PhasorCache:
    """Empty recurrent state for ``batch`` sequences."""
    shape = (batch, self.heads, self.head_dim)
    return PhasorCache(jnp.zeros(shape, jnp.float32),
                       jnp.zeros(shape, jnp.float32),
                       jnp.zeros((batch, self.dim), self.dtype),
                       jnp.zeros((), jnp.int32),
                       self.window_attn.init_cache(batch) if self.window else None,
                       jnp.zeros((batch, self.conv - 1, self.dim), self.dtype)
                       if self.conv else None)

  def step(self, x_bd: jax.Array, cache: PhasorCache
           ) -> tuple[jax.Array, PhasorCache]:
    """One recurrent step: y_t from x_t [B, dim]; equals the parallel form.

    State per head: the complex sum S_t (2 * head_dim floats), the position
    and the previous input (for the key convolution), so O(hd_dim).
    """
    x_bd = x_bd.astype(self.dtype)
    b = x_bd.shape[0]
    t_t = cache.pos[None]
    u_bd, hist = x_bd, cache.x_hist
    if self.conv:  # newest last: x_{t-K+1} .. x_t
      window_bkd = jnp.concatenate([cache.x_hist, x_bd[:, None]], axis=1)
      c_kd = self.conv_kd[...].astype(jnp.float32)
      u_bd = jnp.einsum("kd,bkd->bd", c_kd[::-1], window_bkd.astype(jnp.float32)
                        ).astype(self.dtype)
      hist = window_bkd[:, 1:]
    v, k, q, w_hd = self._phases(u_bd[:, None], cache.x_prev[:, None], t_t)
    k = with_positions(k, w_hd, t_t)
    q = with_positions(q, w_hd, t_t)
    m = bind(v[:, 0], k[:, 0])
    s_re = cache.s_re + m.real
    s_im = cache.s_im + m.imag
    y_bhd = unbind(jax.lax.complex(s_re, s_im), q[:, 0]).real
    y_bhd = y_bhd * read_scale(cache.pos, self.scale)
    y_bd = self.o_proj(y_bhd.astype(v.dtype).reshape(b, self.hd_dim)
                       .astype(self.dtype))
    win = cache.win
    if self.window:
      y_win, win = self.window_attn.step(x_bd, cache.win, cache.pos)
      y_bd = y_bd + y_win
    return y_bd, PhasorCache(s_re, s_im, u_bd, cache.pos + 1, win, hist)
