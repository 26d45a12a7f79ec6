"""HoloKV: k consecutive tokens superposed in one KV-cache slot with +-1 codes.

The cache keeps S = ceil(N / k) slots per layer and KV head, each the
superposition of one group of k consecutive tokens:

  K_s = (1 / sqrt k) sum_{j<k} c_j * key_{ks+j},   V_s likewise,

with codes c_j in {-1, +1}^D, rows of a k x k Walsh-Hadamard matrix tiled
over the head dimension (``codes``), and ``sqrt k`` keeping K_s at one key's
variance. The group still being written (at most k - 1 tokens) is kept
exact beside the slots and superposed when its last token arrives, so a
query at position t reads the slots of the groups before its own and the
exact keys of its own group up to t: prefill and decode see the same cache.

**Sinks and centring.** The first ``sinks`` tokens (whole groups) stay
exact beside the slots, as StreamingLLM keeps its attention sinks: the
first token draws much of every head's attention, and superposed it would
hand that weight to its slot-mates. ``center`` subtracts the sinks' mean key
and value from everything cached (and adds the value mean back to the
output): exact for attention (q . (k - mu) shifts every score of a query
by the same q . mu, and the weights sum to 1), it removes the component all
keys share from the crosstalk.

**Reads.** Demodulating slot s with code j gives
k_hat_{s,j} = sqrt(k) c_j * K_s = key_{ks+j} + sum_{i != j} (c_j c_i) * key_{ks+i}:
the token plus crosstalk of the same order (c_j c_i is another +-1
pattern, so element-wise products do not cancel the other tokens).

* ``"joint"`` (ours): every slot read k ways, one softmax over all (s, j)
  pairs and the exact keys,
  score_{s,j} = (q * c_j) . K_s sqrt(k) / sqrt(D) = q . k_hat_{s,j} / sqrt(D),
  o = sum_{s,j} a_{s,j} sqrt(k) c_j * V_s + sum_u a_u v_u.
  A token whose score stands out is found in whichever code it was
  written with; the read costs k dot products per slot (as many as the
  full cache) but moves N / k slots.
* ``"faithful"`` (the seed's read): a query at phase j = t mod k reads each
  slot once, with its own code: score_s = (c_j * q) . K_s / sqrt(D),
  o = sqrt(k) c_j * sum_s a_s V_s (plus the exact keys of its group, which
  the seed had no notion of). It retrieves from every slot the token of
  the query's phase only.

**The even-boundary rule.** RoPE rotates pairs of channels; a diagonal +-1
code commutes with the rotation exactly when it is constant on each pair,
so codes are built per rotation pair: c_j[i] = H[j, pair(i) mod k] with
pair(i) = i mod D/2 for HF's (i, i + D/2) pairs (this model's layout) and
i // 2 for GGUF's adjacent (2i, 2i+1) pairs. The cache codes keys *after*
RoPE, so its reads are correct either way; the rule is what allows coding
before rotation (one rotation per slot), and ``check_codes`` enforces it.

Example:
  >>> c = HoloKVCache.init(1, 16, 1, 8, jnp.float32, k=4)
  >>> key = jax.random.normal(jax.random.key(0), (1, 8, 1, 8))
  >>> c = c.write(key, key, 0)
  >>> c.ks.shape, int(c.capacity)           # 16 tokens in 4 slots
  ((1, 4, 1, 8), 16)
  >>> k_hat = 2.0 * codes(4, 8)[1] * c.ks[0, 0, 0]   # slot 0 read with code 1
  >>> bool(jnp.allclose(k_hat, key[0, 1, 0]))       # token 1 plus crosstalk
  False
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from holojax.kernels.holokv import slot_attention

K_CHOICES = (1, 2, 4, 8)
READS = ("joint", "faithful")
PAIRINGS = ("half", "adjacent")


def check_k(k) -> int:
  """``k`` if it is one of ``K_CHOICES``, else ``ValueError`` naming it."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) not in K_CHOICES:
    raise ValueError(f"k={k!r} (tokens per slot) must be one of {K_CHOICES}")
  return int(k)


def hadamard(k: int) -> np.ndarray:
  """The k x k Sylvester-Walsh-Hadamard matrix (+-1, rows orthogonal)."""
  h = np.ones((1, 1), np.float32)
  while h.shape[0] < check_k(k):
    h = np.block([[h, h], [h, -h]])
  return h


def pair_index(head_dim: int, pairing: str = "half") -> np.ndarray:
  """The RoPE pair of each channel: i mod D/2 (``"half"``) or i // 2 (``"adjacent"``)."""
  if pairing not in PAIRINGS:
    raise ValueError(f"pairing={pairing!r} must be one of {PAIRINGS}")
  i = np.arange(head_dim)
  return i % (head_dim // 2) if pairing == "half" else i // 2


def codes(k: int, head_dim: int, pairing: str = "half") -> np.ndarray:
  """float32[k, D] +-1 codes, constant on each RoPE pair (the even-boundary rule).

  c_j[i] = H[j, pair(i) mod k]: each Hadamard column covers D / (2k) pairs,
  so the codes are orthogonal over D.

  Raises:
    ValueError: k not in {1, 2, 4, 8}; ``head_dim`` odd or its D/2 pairs
      not a multiple of k (the codes cannot tile it); an unknown pairing.
  """
  k = check_k(k)
  if head_dim < 2 or head_dim % 2 or (head_dim // 2) % k:
    raise ValueError(f"head_dim={head_dim}: the codes of k={k} tile its head_dim/2 RoPE pairs, "
                     f"so head_dim must be even with head_dim/2 a multiple of k")
  return hadamard(k)[:, pair_index(head_dim, pairing) % k]


def seed_codes(k: int, head_dim: int) -> np.ndarray:
  """The seed's codes, c_j[d] = H[j, d mod k] (for contrast: they break the
  rule for adjacent pairs)."""
  return hadamard(k)[:, np.arange(head_dim) % k]


def check_codes(codes_kd, pairing: str = "half") -> None:
  """``ValueError`` if some code differs within a RoPE pair (coding would not
  commute with the rotation), naming the first such pair."""
  c = np.asarray(codes_kd)
  pair = pair_index(c.shape[-1], pairing)
  for p in range(c.shape[-1] // 2):
    cols = c[:, pair == p]
    bad = np.nonzero((cols != cols[:, :1]).any(axis=1))[0]
    if bad.size:
      i, i2 = np.nonzero(pair == p)[0][:2]
      raise ValueError(f"codes: code {bad[0]} differs on RoPE pair ({i}, {i2}) under "
                       f"pairing={pairing!r}; its length {c.shape[-1]} and pattern do not "
                       f"follow the even-boundary rule")


def rotate(x_btgd, positions_t, base: float, pairing: str = "half"):
  """RoPE on either pairing (``"half"`` equals ``holojax.nn.embed.rope``)."""
  d = x_btgd.shape[-1]
  freq = base ** (-jnp.arange(d // 2, dtype=jnp.float32) / (d // 2))
  ang = positions_t.astype(jnp.float32)[:, None] * freq[None]
  cos, sin = jnp.cos(ang)[None, :, None], jnp.sin(ang)[None, :, None]
  x = x_btgd.astype(jnp.float32)
  if pairing == "half":
    a, b = x[..., : d // 2], x[..., d // 2:]
    return jnp.concatenate([a * cos - b * sin, a * sin + b * cos], -1)
  a, b = x[..., 0::2], x[..., 1::2]
  return jnp.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(x.shape)


class HoloKVCache(NamedTuple):
  """One layer's HoloKV cache (module docstring).

  ks, vs  [B, S, G, D]  superposed slots of groups n_x.., model dtype
  kx, vx  [B, n_x k, G, D]  the first n_x groups (attention sinks), exact
  kr, vr  [B, k, G, D]  the open group's exact keys/values: entry j is
                        position (p // k) k + j, valid for j < p mod k
  mk, mv  [B, 1, G, D]  float32 centres: the sinks' mean key / value, set
                        when the last sink is written (zeros when ``center``
                        is off or there are no sinks)
  ``read`` and ``implementation`` (the decode op's backend) are class
  attributes of the subclass ``cache_class`` makes, so jit treats them as
  static.
  """

  ks: jax.Array
  vs: jax.Array
  kx: jax.Array
  vx: jax.Array
  kr: jax.Array
  vr: jax.Array
  mk: jax.Array
  mv: jax.Array

  read = "joint"
  center = False
  implementation = None
  pairing = "half"
  causal_only = False

  @classmethod
  def init(cls, batch, max_len, kv_heads, head_dim, dtype, *, k: int, sinks: int = 0):
    """An empty cache; the first ``sinks`` tokens (rounded up to whole groups) stay exact."""
    k = check_k(k)
    codes(k, head_dim, cls.pairing)  # validates head_dim
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
      raise ValueError(f"sinks={sinks!r} must be an int >= 0")
    n_x = -(-sinks // k)
    z = jnp.zeros((batch, max(-(-max_len // k) - n_x, 1), kv_heads, head_dim), dtype)
    x = jnp.zeros((batch, n_x * k, kv_heads, head_dim), dtype)
    r = jnp.zeros((batch, k, kv_heads, head_dim), dtype)
    m = jnp.zeros((batch, 1, kv_heads, head_dim), jnp.float32)
    return cls(z, z, x, x, r, r, m, m)

  @property
  def k(self) -> int:
    return self.kr.shape[1]

  @property
  def n_x(self) -> int:
    """Exact leading groups."""
    return self.kx.shape[1] // self.k

  @property
  def capacity(self) -> int:
    return (self.ks.shape[1] + self.n_x) * self.k

  def codes(self):
    return jnp.asarray(codes(self.k, self.ks.shape[-1], self.pairing))

  def write(self, k_btgd, v_btgd, p):
    """Stores T tokens at positions p.. : complete groups into slots, the rest exact."""
    kk, t = self.k, k_btgd.shape[1]
    n_g = -(-t // kk) + 1                      # groups this write can touch (static)
    g0 = p // kk
    pos_w = g0 * kk + jnp.arange(n_g * kk)
    is_new = ((pos_w >= p) & (pos_w < p + t))[None, :, None, None]
    is_old = (pos_w < p)[None, :, None, None]
    done = (g0 + jnp.arange(n_g) + 1) * kk <= p + t
    gi = g0 + jnp.arange(n_g)
    slot = jnp.where(done & (gi >= self.n_x), gi - self.n_x, self.ks.shape[1])  # else dropped
    new_pos = p + jnp.arange(t)
    sink_at = jnp.where(new_pos < self.kx.shape[1], new_pos, self.kx.shape[1])
    res_pos = ((p + t) // kk) * kk + jnp.arange(kk)
    c_kd = self.codes() / math.sqrt(kk)

    nxk = self.kx.shape[1]

    def one(slots, sink, res, new, m):
      b, _, g, d = new.shape
      sink = sink.at[:, sink_at].set(new.astype(sink.dtype), mode="drop")
      if self.center and nxk:  # the centre: the sinks' mean, once they are all written
        m = jnp.where((p < nxk) & (p + t >= nxk),
                      sink.astype(jnp.float32).mean(1, keepdims=True), m)
      win = jnp.where(is_new, jnp.take(new, jnp.clip(pos_w - p, 0, t - 1), axis=1)
                      .astype(jnp.float32),
                      jnp.where(is_old, jnp.take(res, jnp.clip(pos_w - g0 * kk, 0, kk - 1),
                                                 axis=1).astype(jnp.float32), 0.0))
      sup = jnp.einsum("bnjgd,jd->bngd", (win - m).reshape(b, n_g, kk, g, d), c_kd)
      slots = slots.at[:, slot].set(sup.astype(slots.dtype), mode="drop")
      res = jnp.take(win, jnp.clip(res_pos - g0 * kk, 0, n_g * kk - 1), axis=1)
      res = jnp.where((res_pos < p + t)[None, :, None, None], res, 0.0)
      return slots, sink, res.astype(self.kr.dtype), m

    ks, kx, kr, mk = one(self.ks, self.kx, self.kr, k_btgd, self.mk)
    vs, vx, vr, mv = one(self.vs, self.vx, self.vr, v_btgd, self.mv)
    return type(self)(ks, vs, kx, vx, kr, vr, mk, mv)

  def exact(self, k_btgd, v_btgd, p, kr, vr):
    """The exact keys each query sees, centred: (keys, values float32[B, T, U, G, D],
    mask bool[T, U]), U = n_x k + k.

    The sinks (positions i < n_x k, visible when in a group before the
    query's own), then the query's own group: entry i is position
    (t // k) k + i, from the residual ``kr``/``vr`` (before p) or the new
    tokens, visible when at most t.
    """
    kk, t = self.k, k_btgd.shape[1]
    q_pos = p + jnp.arange(t)
    e_pos = (q_pos // kk)[:, None] * kk + jnp.arange(kk)[None]
    new = (e_pos >= p)[None, :, :, None, None]
    i_new = jnp.clip(e_pos - p, 0, t - 1)
    i_old = jnp.clip(e_pos - (p // kk) * kk, 0, kk - 1)
    f32 = jnp.float32
    b, _, g, d = k_btgd.shape
    nx = self.kx.shape[1]

    def gather(x_new, x_old, sink, m):
      own = jnp.where(new, jnp.take(x_new, i_new, axis=1).astype(f32),
                      jnp.take(x_old, i_old, axis=1).astype(f32))
      sink = jnp.broadcast_to(sink[:, None].astype(f32), (b, t, nx, g, d))
      return jnp.concatenate([sink, own], axis=2) - m[:, :, None]

    x_mask = (jnp.arange(nx)[None] // kk) < (q_pos // kk)[:, None]
    mask = jnp.concatenate([x_mask, e_pos <= q_pos[:, None]], axis=1)
    return (gather(k_btgd, kr, self.kx, self.mk), gather(v_btgd, vr, self.vx, self.mv), mask)

  def attend(self, q_bthd, k_btgd, v_btgd, p):
    """T queries at positions p.. against the cache and themselves:
    (attention output [B, T, H, D], the cache with the new tokens)."""
    new = self.write(k_btgd, v_btgd, p)
    ke, ve, e_mask = new.exact(k_btgd, v_btgd, p, self.kr, self.vr)
    if q_bthd.shape[1] == 1:  # decode: the slots through the op, no [T, S] scores
      out = attend_decode(q_bthd, new.ks, new.vs, ke, ve, e_mask, p, read=self.read,
                          c_kd=self.codes(), implementation=self.implementation,
                          first=self.n_x)
      return new.uncentre(out), new
    out = attend_reference(q_bthd, new.ks, new.vs, ke, ve, e_mask, p, read=self.read,
                           c_kd=self.codes(), first=self.n_x)
    return new.uncentre(out), new

  def uncentre(self, out_bthd):
    """Adds the value centre back (attention weights sum to 1)."""
    b, t, h, d = out_bthd.shape
    g = self.mv.shape[2]
    mv = jnp.repeat(self.mv, h // g, axis=2)  # [B, 1, H, D]: query head h reads kv head h // r
    return (out_bthd.astype(jnp.float32) + mv).astype(out_bthd.dtype)


def attend_reference(q_bthd, ks_bsgd, vs_bsgd, ke_btugd, ve_btugd, e_mask_tu, p, *, read: str,
                     c_kd, first: int = 0):
  """The HoloKV read in ``jnp`` (module docstring), for T queries at p..: slot s
  holds group first + s, read when that group is before the query's own (both
  reads), and the exact keys (sinks, the query's group) where their mask says."""
  b, t, h, d = q_bthd.shape
  g, kk, s = ks_bsgd.shape[2], c_kd.shape[0], ks_bsgd.shape[1]
  r = h // g
  scale = 1.0 / math.sqrt(d)
  q_pos = p + jnp.arange(t)
  q = q_bthd.astype(jnp.float32).reshape(b, t, g, r, d)
  if read == "joint":
    c_tjd = jnp.broadcast_to(c_kd[None], (t, kk, d))
    gain = math.sqrt(kk)
  else:  # faithful: the query's own phase, no sqrt(k) on the score
    c_tjd = c_kd[q_pos % kk][:, None]
    gain = 1.0
  f32 = jnp.float32
  qc = q[:, :, :, :, None] * c_tjd[None, :, None, None] * (scale * gain)
  s_c = jnp.einsum("btgrjd,bsgd->btgrjs", qc, ks_bsgd.astype(f32))
  seen_ts = (jnp.arange(s) + first)[None] < (q_pos // kk)[:, None]
  s_c = jnp.where(seen_ts[None, :, None, None, None], s_c, -jnp.inf)
  s_e = jnp.einsum("btgrd,btugd->btgru", q * scale, ke_btugd.astype(f32))
  s_e = jnp.where(e_mask_tu[None, :, None, None], s_e, -jnp.inf)
  m = jnp.maximum(s_c.max((-2, -1)), s_e.max(-1))  # finite: a query sees itself
  p_c = jnp.exp(s_c - m[..., None, None])
  p_e = jnp.exp(s_e - m[..., None])
  z = p_c.sum((-2, -1)) + p_e.sum(-1)
  o_c = jnp.einsum("btgrjs,bsgd->btgrjd", p_c, vs_bsgd.astype(f32))
  o_c = (o_c * c_tjd[None, :, None, None]).sum(-2) * math.sqrt(kk)
  o_e = jnp.einsum("btgru,btugd->btgrd", p_e, ve_btugd.astype(f32))
  return ((o_c + o_e) / z[..., None]).reshape(b, t, h, d).astype(q_bthd.dtype)


def attend_decode(q_b1hd, ks_bsgd, vs_bsgd, ke_b1ugd, ve_b1ugd, e_mask_1u, p, *, read: str,
                  c_kd, implementation=None, first: int = 0):
  """``attend_reference`` for one query per row (decode): the slots through
  :func:`holojax.kernels.holokv.slot_attention` (rows q * c_j, reading the N / k
  slots as stored), merged with the exact keys by their log-sum-exp."""
  b, _, h, d = q_b1hd.shape
  g, kk = ks_bsgd.shape[2], c_kd.shape[0]
  r = h // g
  q = q_b1hd[:, 0].astype(jnp.float32).reshape(b, g, r, d) / math.sqrt(d)
  c_jd = c_kd if read == "joint" else jax.lax.dynamic_slice_in_dim(c_kd, p % kk, 1)
  gain = math.sqrt(kk) if read == "joint" else 1.0
  rows = (q[:, :, :, None] * c_jd[None, None, None] * gain).reshape(b, g, -1, d)
  n_valid = jnp.clip(p // kk - first, 0, ks_bsgd.shape[1])
  o, lse = slot_attention(rows, ks_bsgd, vs_bsgd, n_valid, implementation=implementation)
  j = c_jd.shape[0]
  o, lse = o.reshape(b, g, r, j, d), lse.reshape(b, g, r, j)
  s_e = jnp.einsum("bgrd,bugd->bgru", q, ke_b1ugd[:, 0].astype(jnp.float32))
  s_e = jnp.where(e_mask_1u[0][None, None, None], s_e, -jnp.inf)
  m = jnp.maximum(lse.max(-1), s_e.max(-1))  # finite: the query sees itself
  w_c, w_e = jnp.exp(lse - m[..., None]), jnp.exp(s_e - m[..., None])
  o_c = (w_c[..., None] * o * c_jd[None, None, None]).sum(-2) * math.sqrt(kk)
  o_e = jnp.einsum("bgru,bugd->bgrd", w_e, ve_b1ugd[:, 0].astype(jnp.float32))
  out = (o_c + o_e) / (w_c.sum(-1) + w_e.sum(-1))[..., None]
  return out.reshape(b, 1, h, d).astype(q_b1hd.dtype)


@functools.cache
def cache_class(read: str = "joint", implementation=None, pairing: str = "half",
                center: bool = False):
  """The ``HoloKVCache`` subclass for a read, a decode backend, a pairing and
  whether keys and values are centred."""
  if read not in READS:
    raise ValueError(f"read={read!r} must be one of {READS}")
  if pairing not in PAIRINGS:
    raise ValueError(f"pairing={pairing!r} must be one of {PAIRINGS}")
  if not isinstance(center, bool):
    raise ValueError(f"center={center!r} must be True or False")
  if (read, implementation, pairing, center) == ("joint", None, "half", False):
    return HoloKVCache
  name = f"HoloKVCache_{read}_{implementation}_{pairing}_{'c' if center else 'raw'}"
  return type(name, (HoloKVCache,), {"read": read, "implementation": implementation,
                                     "pairing": pairing, "center": center,
                                     "__module__": __name__})
