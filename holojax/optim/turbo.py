"""TurboAdam: Adam with a log-scale n-bit v and a sign-coded "CoState" m.

Layout: a tensor ``(*lead, L)`` is cut into blocks of ``block_size`` along
its last axis (:mod:`holojax.optim.layout`), so the state keeps the leading
axes and is sharded like the parameter.

Tree layout (``tree_layout``): ``"leaf"`` (the default) keeps a state per
tensor and updates each tensor in its own subgraph, so the program (and its
compile time) grows with the number of tensors. ``"flat"`` groups the
blocked tensors by the fields they store (m and v / v only / m only
compressed) and concatenates each group's row blocks, tensor after tensor
in tree order, into one buffer ``g_nb [NB, bs]``; the state fields are
``[NB, ...]`` arrays and ``alpha float32[n]`` (n tensors in the group), and
the dense tensors' ``mu``/``nu`` are one raveled ``float32[N_dense]``. One
update runs the maths below once per buffer (one fused v step, one seed:
the draws hash the global element index) and splits the update back: a
constant number of ops whatever the number of tensors. The per-tensor
quantities (``alpha``, the quantiles ``P_null``/``P_amp``, the phase scale)
are segmented reductions over each tensor's block range
(:class:`Segments`): segment ids from an int32 cumsum, exact integer
counts from cumsum differences (a sorted segment sum on CPU), float sums
per block then by a segmented scan, every tensor's thresholds read off
its blocks sorted within tensors (GPU) or found by one 32-round bisection
for all tensors (CPU, sharded buffers). The maths per tensor is the leaf layout's; only the
random draws differ. The default configuration's "mv" group (m and v
compressed, not faithful, no error feedback) runs as two row passes
(:mod:`holojax.kernels.turbo_adam.rowblock_reference`: everything per block,
then alpha per tensor, then the CoState signs and ``c`` per block, then the
quantiles), in ``jnp`` or, with ``implementation`` "mosaic" / "interpret",
in the Mosaic GPU row kernels (block_size 128, v_bits 2 / 4 / 8) that keep
a block's whole chain in registers.

Flat layout under explicit sharding (FSDP, ``AxisType.Explicit``): each
group's sharded tensors go to a buffer of their own per set of mesh axes
(``groups["mv@fsdp"]``; ``"dense@fsdp"`` for the dense ones) of shape
``[D, NB_local, ...]`` sharded on axis 0 over those axes (``D`` devices along
them): device ``d`` holds the state of its own pieces' blocks, tensor after
tensor. The update runs in ``jax.shard_map``: each device concatenates its
pieces' blocks (no communication), updates them, and all-reduces the
per-tensor sums and counts (``alpha``'s two sums, the phase scale, the
quantiles' counts: a few numbers per tensor, the only collectives); no
gather. The v draws hash each block's row in the *unsharded* buffer (the
same reshapes applied to iotas offset by the device's index), so the update
equals the unsharded flat update up to the order of float sums. A tensor's
piece must be whole rows of whole blocks: a last axis whose shards are not
whole blocks is moved onto a leading axis first (an all-to-all, as in the
leaf layout); replicated tensors, and tensors that cannot be cut evenly,
stay in the unsharded buffers (replicated; the latter gathered). The
``[D, ...]`` shapes tie a state to its mesh size: another mesh size fails
``update``'s state check (ValueError) rather than scrambling blocks. The
kernels (``implementation`` other than "xla") draw by buffer position and
refuse sharded parameters (ValueError); so do they in the leaf layout, where
they update whole tensors.

Second moment (per block, really packed, see :mod:`holojax.kernels.quant`)::

  v_{t-1} = decode(codes, lo, hi)                      # log grid, code 0 == 0
  v_t     = b2 v_{t-1} + (1 - b2) g_t^2                # EMA in the decoded domain
  codes   = stochastic_round(v_t)                      # E[decode(codes)] == v_t

``lo``/``hi`` are float16 ``log2`` bounds, so the codes cover any float32
gradient. The step runs in per-block power-of-two units ``2^k`` (``k = 0``
unless a block's ``|g|`` or ``sqrt(v)`` exceeds ``2^60``), so ``g^2`` never
overflows: every finite gradient gives a finite state and update.

First moment, default: **CoState in units of sqrt(v)**. With the float32
``m_t = b1 m^_{t-1} + (1 - b1) g_t`` and the *stored* ``v^_t`` (after
re-encoding), the state codes the unit-free ratio ::

  q_t     = clip(m_t / sqrt(v^_t), -C, C)     (0 where v^_t = 0)
  q_t     = alpha r + delta,     alpha = (q_t . r) / (r . r)
  r       = m_ref_bits-bit code of q_t: sign (+ for 2 bits a magnitude bit
            choosing between two fp16 levels per block: the means of |q|
            below / above the block mean)
  delta^  = s_b sign(delta)      per block b, with c_b = mean|delta_b|:
            null  (c_b <  P_null):            s_b = 0
            phase (P_null <= c_b < P_amp):    s_b = mean of c over phase blocks
            amp   (c_b >= P_amp):             s_b = c_b
  m^_t    = (alpha r + delta^) sqrt(v^_t)

``P_null``/``P_amp`` are the ``null_pct``/``amp_pct`` quantiles of ``c`` over
the tensor's blocks, found by bisection on the float bits (counts, no sort,
so they work on sharded tensors). Adam's EMAs satisfy ``|m_t| <= C sqrt(v_t)``
(Cauchy-Schwarz, :func:`ratio_bound`; ``C = 7.27`` at b1=0.9, b2=0.999), so
``q`` is O(1) in every element whatever the gradient's scale: blocks (and
elements) whose gradients differ by orders of magnitude are coded equally
well, and no fp16 field can overflow. The clip enforces the same bound
against the quantised ``v^``: where stochastic rounding put ``v^`` far below
``v`` (coarse 2-bit grids), an unclipped ``q`` would inflate ``m`` and the
next update. (Coding ``m`` itself, the previous default, shared one "phase"
scale between blocks of very different magnitude: on a tensor whose rows'
gradient scales span 1e-4..10, small-gradient rows got updates 30x Adam's and
the update's cosine with Adam's was 0.03; now 0.93.)

* ``faithful=True`` is the original CoState, in units of ``m``: ``r = g_t``
  at encode time, and because ``g_t`` is not stored the next step decodes
  with the *new* gradient, ``m^_t = alpha_t g_{t+1} + delta^_t`` (not an EMA
  of gradients; fp16 scales overflow beyond 65504, as in the original).
* ``error_feedback=True`` adds the last coding error of ``delta`` before
  coding (a float32 buffer: +32 bits/param).

The step is Adam's: ``u = (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)``
(``v_t``/``m_t`` before re-encoding). 1-D tensors and tensors with fewer
than ``min_m_compress_elements`` keep m dense float32; 1-D tensors, and
tensors whose packed v would not be smaller, keep v dense as float32
``sqrt(v)`` (:mod:`holojax.optim.moments`). Non-finite gradients are
handled by :func:`turbo_adam` (``optax.apply_if_finite`` around the whole
chain), not here.

State layout (default, 4-bit v, 2-bit reference, block 128), bits/param::

  v:  4 (codes) + 2*16/128 (log2 lo, hi)                          = 4.25
  m:  2 (ref codes) + 2*16/128 (ref levels) + 1 (delta signs)
      + 16/128 (delta scale)                                      = 3.375
  per tensor: alpha float32; per state: count int32, key uint32[2]

(flat layout: the same per block; dense m of the v-only group and dense v
of the m-only group are stored in ``[NB, bs]`` blocks, padding included.)

Example::

  >>> import jax, jax.numpy as jnp, optax
  >>> params = {"w": jnp.ones((64, 128))}
  >>> opt = turbo_adam(1e-2, min_m_compress_elements=1024)
  >>> state = opt.init(params)
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> updates, state = opt.update(grads, state, params)
  >>> bool(jnp.allclose(updates["w"], -1e-2, rtol=1e-3))
  True

References:
  Kingma & Ba, Adam (2015); Dettmers et al., 8-bit Optimizers via Block-wise
  Quantization (2022); TurboAdam 0.1.0 README (D. Kogan, 2026).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from holojax.kernels import turbo_adam as kernels
from holojax.kernels.turbo_adam import rowblock_reference as rows
from holojax.kernels.turbo_adam.rowblock_reference import (  # noqa: F401 (re-exported)
    Q_MAX, SHIFT_BITS, block_shift, costate_decode_delta, decode_reference, decode_sqrt_v,
    encode_reference, ratio_bound)
from holojax.optim import layout as lay
from holojax.kernels import quant
from holojax.optim import moments, validate

# Arguments that set shapes or the code path: static under
# ``optax.inject_hyperparams(turbo_adam, static_args=STATIC_ARGS)``.
STATIC_ARGS = ("block_size", "v_bits", "compress_m", "compress_v", "error_feedback",
               "min_m_compress_elements", "faithful", "m_ref_bits", "implementation",
               "tree_layout", "scanned")



class PackedV(NamedTuple):
  """Log-scale v; each field a tree like the params (``optax.MaskedNode()``,
  which holds no array, where v is dense)."""
  codes: Any   # uint8[*lead, nb, block_size * v_bits / 8], planar packed
  bounds: Any  # float16[*lead, nb, 2]: log2 of the block's grid (lo, hi)


class CoStateM(NamedTuple):
  """CoState m; each field a tree like the params (``optax.MaskedNode()`` where unused)."""
  alpha: Any   # float32[], projection coefficient (per tensor)
  ref: Any     # uint8[*lead, nb, block_size * m_ref_bits / 8] (default mode)
  levels: Any  # float16[*lead, nb, m_ref_bits] (default mode)
  signs: Any   # uint8[*lead, nb, block_size / 8], 1 = negative delta
  scales: Any  # float16[*lead, nb]: 0 null / shared phase / own amplitude
  err: Any     # float32[*lead, nb, block_size] (error_feedback only)


class ScaleByTurboAdamState(NamedTuple):
  """State of :func:`scale_by_turbo_adam` (``tree_layout="leaf"``)."""
  count: jax.Array  # int32[], steps taken
  key: jax.Array    # uint32[2] (raw key data), split every step
  mu: Any           # per leaf: float32[param shape] where m is dense, else MaskedNode()
  nu: Any           # per leaf: float32[param shape] sqrt(v) where v is dense, else MaskedNode()
  v: PackedV
  m: CoStateM


class TurboFlatGroup(NamedTuple):
  """The blocked tensors that store the same fields, their row blocks
  concatenated tensor after tensor (tree order) along one block axis ``NB``."""
  mu: Any      # float32[NB, bs]: m_t where m is dense (the v-only group), else MaskedNode()
  nu: Any      # float32[NB, bs]: sqrt(v) where v is dense (the m-only group), else MaskedNode()
  v: PackedV   # codes uint8[NB, bs * v_bits / 8], bounds float16[NB, 2] (or MaskedNode())
  m: CoStateM  # alpha float32[n tensors]; ref, levels, signs, scales, err [NB, ...]


class ScaleByTurboAdamFlatState(NamedTuple):
  """State of :func:`scale_by_turbo_adam` with ``tree_layout="flat"``."""
  count: jax.Array  # int32[], steps taken
  key: jax.Array    # uint32[2] (raw key data), split every step
  mu: Any           # float32[N dense]: the dense tensors' m, raveled and concatenated
  nu: Any           # float32[N dense]: their sqrt(v) (MaskedNode() both, if none)
  groups: Any       # {"mv", "v", "m"} -> TurboFlatGroup: m and v / v only / m only compressed;
  #                   under explicit sharding also "mv@fsdp", ..., "dense@fsdp": [D, NB_local, ...]
  #                   buffers split over those mesh axes (module docstring)


# Flat-layout groups: name -> (m compressed, v compressed).
FLAT_GROUPS = {"mv": (True, True), "v": (False, True), "m": (True, False)}


@dataclasses.dataclass(frozen=True)
class TurboAdamLayout:
  """Static (shape-setting) configuration, validated in ``__post_init__``."""
  block_size: int = 128
  v_bits: int = 4
  compress_m: bool = True
  compress_v: bool = True
  error_feedback: bool = False
  min_m_compress_elements: int = 4096
  faithful: bool = False
  m_ref_bits: int = 2
  tree_layout: str = "leaf"

  def __post_init__(self):
    validate.static_choice("tree_layout", self.tree_layout, lay.TREE_LAYOUTS)
    validate.static_int("block_size", self.block_size, 8)
    if self.block_size % 8:
      raise ValueError(f"block_size={self.block_size!r} must be a positive multiple of 8 "
                       "(whole bytes of packed codes per block)")
    validate.static_int("v_bits", self.v_bits, choices=quant.LOG_WIDTHS)
    validate.static_int("m_ref_bits", self.m_ref_bits, choices=(1, 2))
    validate.static_int("min_m_compress_elements", self.min_m_compress_elements, 0)
    for name in ("compress_m", "compress_v", "error_feedback", "faithful"):
      validate.static_bool(name, getattr(self, name))

  def m_compressed(self, shape) -> bool:
    n = math.prod(shape)
    return self.compress_m and len(shape) >= 2 and n > 0 and n >= self.min_m_compress_elements

  def v_compressed(self, shape) -> bool:
    if not self.compress_v or len(shape) < 2 or math.prod(shape) == 0:
      return False
    rows = self.row_blocks(shape)
    return rows * (self.block_size * self.v_bits // 8 + 4) < 4 * math.prod(shape)

  def blocked(self, shape) -> bool:
    return self.m_compressed(shape) or self.v_compressed(shape)

  def flat_plan(self, shapes) -> tuple[list[int], dict[str, list[int]]]:
    """Flat layout of leaves of ``shapes``: (dense leaf indices, group -> leaf indices),
    groups in :data:`FLAT_GROUPS` order, empty ones left out."""
    kind = {v: k for k, v in FLAT_GROUPS.items()}
    dense, groups = [], {k: [] for k in FLAT_GROUPS}
    for i, shape in enumerate(shapes):
      mc, vc = self.m_compressed(shape), self.v_compressed(shape)
      (groups[kind[mc, vc]] if mc or vc else dense).append(i)
    return dense, {k: v for k, v in groups.items() if v}

  def row_blocks(self, shape) -> int:
    """Blocks of a blocked tensor of ``shape`` (rows times blocks per row)."""
    return math.prod(shape[:-1]) * lay.num_blocks(shape[-1], self.block_size)


# ----------------------------------------------------------------------------
# Quantiles without a sort.


class Whole:
  """Per-tensor reductions over all of one tensor's blocks (the leaf layout).

  A per-tensor quantity is a scalar; :meth:`blocks` / :meth:`elems` broadcast it.
  Order statistics are always counted (a tensor may be sharded).
  """
  ndim = 0
  sort = False

  @staticmethod
  def size(x_nb: jax.Array):
    return x_nb.size

  @staticmethod
  def sum(x: jax.Array) -> jax.Array:
    return jnp.sum(x)

  @staticmethod
  def count(mask: jax.Array) -> jax.Array:
    return jnp.sum(mask, dtype=jnp.int32)

  @staticmethod
  def count_le(bits: jax.Array, t_k: jax.Array) -> jax.Array:
    """``int32[K]``: entries of ``bits`` at most each threshold ``t_k[j]``."""
    return jnp.stack([jnp.sum(bits <= t_k[j], dtype=jnp.int32) for j in range(t_k.shape[0])])

  @staticmethod
  def blocks(a: jax.Array) -> jax.Array:
    return a

  @staticmethod
  def elems(a: jax.Array) -> jax.Array:
    return a


WHOLE = Whole()


@dataclasses.dataclass(frozen=True)
class Segments:
  """Per-tensor reductions over contiguous block ranges of one ``[NB, bs]``
  buffer (the flat layout): tensor ``s`` owns blocks ``starts[s]:ends[s]``.

  Every reduction is a constant number of ops whatever the number of
  tensors ``n``: the block's segment id is a cumsum of boundary marks,
  integer counts are differences of an int32 cumsum (exact; or, with
  ``scatter``, a sorted segment sum: a serial loop on CPU, where XLA's
  cumsum is a log-depth scan 7x slower, but atomics on few addresses on GPU),
  float sums are reduced per block first, then by a segmented scan (each
  segment summed apart: no cancellation against other tensors, no atomics).
  Order statistics (:func:`order_statistics`), with ``sort``: two stable
  radix sorts of the ``[NB]`` keys (by value, then by tensor: each tensor's
  blocks end up in value order) and one gather; else 32 rounds of counts.
  Both are exact; sorting is the faster on GPUs (two radix-sort passes instead
  of 32 rounds of counting and launches), counting on CPU.

  Sharded (inside ``jax.shard_map``, ``axes`` the mesh axes that split every
  tensor into ``shards`` equal pieces): the buffer is one device's blocks,
  each tensor's contiguous, and every sum and count is the local one
  all-reduced over ``axes`` (``float32[n]`` / ``int32[K, n]``: a few numbers
  per tensor); sizes are the whole tensors'.
  """
  starts: jax.Array  # int32[n], first block of each tensor
  ends: jax.Array    # int32[n], one past its last block
  seg_nb: jax.Array  # int32[NB], the tensor of each block
  scatter: bool = False  # counts by segment sum (CPU) instead of cumsum differences
  sort: bool = False     # order statistics by sorting (GPU; unsharded) instead of counts
  axes: tuple[str, ...] = ()  # mesh axes the tensors are split over (inside shard_map)
  shards: int = 1             # pieces each tensor is split into
  ndim: ClassVar[int] = 1

  @classmethod
  def of(cls, nbs, scatter: bool | None = None, axes: tuple[str, ...] = (),
         shards: int = 1, sort: bool | None = None) -> Segments:
    """Segments of consecutive tensors of ``nbs`` blocks each (static ints > 0);
    ``scatter=None``: segment-sum counts on CPU, cumsum differences elsewhere;
    ``sort=None``: order statistics by sorting on GPU when unsharded, else by
    counts; ``axes``, ``shards``: see the class docstring (``nbs`` are then local)."""
    if sort is None:
      sort = jax.default_backend() == "gpu" and not axes
    if sort and axes:
      raise ValueError(f"Segments: sort=True needs whole tensors (axes=()), got "
                       f"axes={tuple(axes)!r}; sharded buffers find order statistics "
                       "by all-reduced counts")
    ends = np.cumsum(nbs).astype(np.int32)
    # Opaque to XLA: the per-block ids below are computed at run time, never
    # constant-folded into an [NB] array in the program.
    starts, ends = jax.lax.optimization_barrier(
        (jnp.asarray(ends - np.asarray(nbs, np.int32)), jnp.asarray(ends)))
    marks = jnp.zeros((int(sum(nbs)),), jnp.int32).at[starts[1:]].add(1)
    scatter = jax.default_backend() == "cpu" if scatter is None else scatter
    return cls(starts, ends, jnp.cumsum(marks, dtype=jnp.int32), scatter, sort, tuple(axes),
               shards)

  def size(self, x_nb: jax.Array) -> jax.Array:
    del x_nb
    n = self.ends - self.starts
    return n * self.shards if self.axes else n

  def _all(self, x: jax.Array) -> jax.Array:
    """The sum of the devices' ``x`` over :attr:`axes` (``x`` itself if unsharded)."""
    return jax.lax.psum(x, self.axes) if self.axes else x

  def _block_sums(self, x: jax.Array) -> jax.Array:
    return jnp.sum(x, axis=-1) if x.ndim == 2 else x

  def sum(self, x: jax.Array) -> jax.Array:
    """``float32[n]``: sums of ``x [NB]`` (or ``[NB, bs]``) over each tensor's blocks."""
    x_nb = self._block_sums(x).astype(jnp.float32)
    first = jnp.zeros(x_nb.shape, bool).at[self.starts].set(True)

    def add(a, b):
      (xa, fa), (xb, fb) = a, b
      return jnp.where(fb, xb, xa + xb), fa | fb
    scan, _ = jax.lax.associative_scan(add, (x_nb, first))
    return self._all(scan[self.ends - 1])

  def _count_rows(self, mask_kb: jax.Array) -> jax.Array:
    """``int32[K, n]`` counts of ``mask [K, NB]`` per tensor."""
    if self.scatter:
      return self._all(jax.vmap(lambda m: jax.ops.segment_sum(
          m.astype(jnp.int32), self.seg_nb, self.starts.shape[0], indices_are_sorted=True))(mask_kb))
    c = jnp.cumsum(mask_kb.astype(jnp.int32), axis=-1)
    c = jnp.pad(c, ((0, 0), (1, 0)))
    return self._all(c[:, self.ends] - c[:, self.starts])

  def count(self, mask_nb: jax.Array) -> jax.Array:
    return self._count_rows(mask_nb[None])[0]

  def count_le(self, bits_nb: jax.Array, t_kn: jax.Array) -> jax.Array:
    """``int32[K, n]``: blocks of each tensor with ``bits`` at most its threshold."""
    return self._count_rows(bits_nb[None, :] <= t_kn[:, self.seg_nb])

  def sorted_in_tensors(self, keys_nb: jax.Array) -> jax.Array:
    """``keys [NB]`` sorted within each tensor's blocks: stable sorts by key,
    then by tensor (each a single-key sort, XLA:GPU's radix sort)."""
    keys, seg = jax.lax.sort((keys_nb, self.seg_nb), num_keys=1, is_stable=True)
    return jax.lax.sort((seg, keys), num_keys=1, is_stable=True)[1]

  def blocks(self, a_n: jax.Array) -> jax.Array:
    return a_n[self.seg_nb]

  def elems(self, a_n: jax.Array) -> jax.Array:
    return a_n[self.seg_nb][:, None]


def order_statistics(x: jax.Array, ks: jax.Array, red=WHOLE) -> jax.Array:
  """The ``k``-th smallest entries (0-based, ``0 <= k < n``) of finite
  non-negative ``x``, for each ``k``.

  Bisection on the float32 bit patterns (monotone for ``x >= 0``): 32
  rounds of counting, so it is exact, needs no sort and works on sharded
  ``x`` (the counts are all-reduced). ``ks``: int32 vector, may be traced.
  With ``red`` a :class:`Segments`, ``x`` is ``[NB]`` and ``ks`` ``[K, n]``:
  every tensor bisects its own thresholds, all in the same 32 rounds, or,
  with ``red.sort`` (GPU, unsharded), reads them off its sorted blocks (the
  same values; ``k`` clipped into the tensor's own blocks).
  """
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
  if red.sort:
    ks = jnp.clip(ks, 0, (red.ends - red.starts - 1)[None, :])
    picked = red.sorted_in_tensors(bits)[red.starts[None, :] + ks]
    return jax.lax.bitcast_convert_type(picked, jnp.float32)
  need = ks + 1  # the answer is the smallest t with count(bits <= t) >= k + 1

  def body(_, lohi):
    lo, hi = lohi
    mid = lo + (hi - lo) // 2
    ok = red.count_le(bits, mid) >= need
    return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

  lo = jnp.full(ks.shape, -1, jnp.int32)
  hi = jnp.full(ks.shape, 0x7F800000, jnp.int32)  # bits of +inf: count == x.size
  _, hi = jax.lax.fori_loop(0, 32, body, (lo, hi))
  return jax.lax.bitcast_convert_type(hi, jnp.float32)


def quantiles(x: jax.Array, qs, red=WHOLE) -> jax.Array:
  """``jnp.quantile(x, qs)`` (linear interpolation) for non-negative ``x``
  (:func:`order_statistics`: by counts, or by sorting with ``red.sort``).

  With ``red`` a :class:`Segments`: ``[len(qs), n]``, each tensor's quantiles
  of its own blocks.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([4.0, 0.0, 3.0, 1.0, 2.0])
    >>> quantiles(x, (0.1, 0.5, 0.9)).tolist()
    [0.4000000059604645, 2.0, 3.5999999046325684]
  """
  n = red.size(x)
  top = n - 1 if red.ndim == 0 else (n - 1)[None]
  q = jnp.stack([jnp.asarray(q, jnp.float32) for q in qs]).reshape((-1,) + (1,) * red.ndim)
  pos = jnp.clip(q * top, 0.0, top)
  lo = jnp.floor(pos).astype(jnp.int32)
  stats = order_statistics(x, jnp.concatenate([lo, jnp.minimum(lo + 1, top)]), red)
  a, b = stats[:len(qs)], stats[len(qs):]
  return a + (pos - lo) * (b - a)


# ----------------------------------------------------------------------------
# CoState m (on blocks [..., nb, bs]).


def costate_code(delta: jax.Array, null_pct, amp_pct, red=WHOLE
                 ) -> tuple[jax.Array, jax.Array]:
  """CoState sign code of ``delta [..., nb, bs]``: ``(sign_codes, scales float16[..., nb])``.

  Block magnitude ``c_b = mean|delta_b|``; blocks below the ``null_pct``
  quantile of ``c`` (over every block of the tensor: ``red``, one tensor or
  :class:`Segments` of a flat buffer) decode to 0, blocks at or above the
  ``amp_pct`` quantile keep their own scale ``c_b``, the rest share the mean
  ``c`` of their class.
  """
  return quant.pack_signs(delta), costate_scales(jnp.mean(jnp.abs(delta), axis=-1), null_pct,
                                                 amp_pct, red)


def costate_scales(c: jax.Array, null_pct, amp_pct, red=WHOLE) -> jax.Array:
  """``float16[..., nb]`` CoState scales of block magnitudes ``c [..., nb]``
  (:func:`costate_code`)."""
  t_null, t_amp = quantiles(c, (null_pct, amp_pct), red)
  null = c < red.blocks(t_null)
  amp = (c >= red.blocks(t_amp)) & ~null
  phase = ~null & ~amp
  s_phase = red.sum(jnp.where(phase, c, 0.0)) / jnp.maximum(red.count(phase), 1)
  return jnp.where(null, 0.0, jnp.where(amp, c, red.blocks(s_phase))).astype(jnp.float16)


class _MLeaf(NamedTuple):
  """One tensor's CoState fields (a view into :class:`CoStateM`)."""
  alpha: jax.Array
  ref: jax.Array
  levels: jax.Array
  signs: jax.Array
  scales: jax.Array
  err: jax.Array


def decode_m(ms: _MLeaf, g_blocks: jax.Array, layout: TurboAdamLayout, red=WHOLE
             ) -> jax.Array:
  """Previous code ``[..., nb, bs]``: ``q^`` (default) or ``m^`` (faithful, needs ``g``)."""
  delta = costate_decode_delta(ms.signs, ms.scales)
  alpha = red.elems(ms.alpha)
  if layout.faithful:
    return alpha * g_blocks + delta
  return alpha * decode_reference(ms.ref, ms.levels, layout.m_ref_bits) + delta


def encode_m(q: jax.Array, g_blocks: jax.Array, ms: _MLeaf, layout: TurboAdamLayout,
             null_pct, amp_pct, red=WHOLE) -> _MLeaf:
  """CoState code of ``q [..., nb, bs]`` (``m`` itself when faithful; see module docstring).

  ``alpha`` (and the CoState quantiles) are per tensor: ``red`` reduces over
  one tensor (a scalar ``alpha``) or over each :class:`Segments` range of a
  flat ``[NB, bs]`` buffer (``alpha float32[n]``).
  """
  if layout.faithful:
    ref_codes, ref_levels = ms.ref, ms.levels  # unused, size 0
    r = g_blocks
    qr, rr = red.sum(q * r), red.sum(r * r)
  else:  # the row passes' per-block sums (rows.reference_dots), then per tensor
    ref_codes, ref_levels, sums = rows.encode_reference_sums(q, layout.m_ref_bits)
    r = decode_reference(ref_codes, ref_levels, layout.m_ref_bits)
    qr_b, rr_b = rows.reference_dots(ref_levels, sums, q.shape[-1])
    qr, rr = red.sum(qr_b), red.sum(rr_b)
  alpha = jnp.where(rr > 0, qr / jnp.where(rr > 0, rr, 1.0), 0.0)
  delta = q - red.elems(alpha) * r
  if layout.error_feedback:
    delta = delta + ms.err
  sign_codes, scales = costate_code(delta, null_pct, amp_pct, red)
  err = delta - costate_decode_delta(sign_codes, scales) if layout.error_feedback else ms.err
  return _MLeaf(alpha.astype(jnp.float32), ref_codes, ref_levels, sign_codes, scales, err)


# ----------------------------------------------------------------------------
# The transformation.


def _init_leaf(p, layout: TurboAdamLayout):
  """Per-leaf state ``(mu, nu, (v codes, v bounds), m fields)``, built from
  ``zeros_like(p)`` so every array carries the parameter's sharding; unused
  fields are ``optax.MaskedNode()`` (no array: orbax and the accounting see
  nothing)."""
  shape = tuple(p.shape)
  z = jnp.zeros_like(p, dtype=jnp.float32)
  empty = lambda dtype: optax.MaskedNode()  # no leaves: nothing stored
  bs = layout.block_size
  mc, vc = layout.m_compressed(shape), layout.v_compressed(shape)
  zb = lay.row_blocks(lay.reshard(z, lay.work_spec(z, bs)), bs) if (mc or vc) else None
  per_block = lambda k, dtype: jnp.zeros_like(zb[..., :k], dtype=dtype)
  mu = empty(jnp.float32) if mc else z
  nu = empty(jnp.float32) if vc else jnp.zeros_like(z)  # never one buffer twice: donation
  v = ((per_block(bs * layout.v_bits // 8, jnp.uint8), per_block(2, jnp.float16)) if vc
       else (empty(jnp.uint8), empty(jnp.float16)))
  if mc:
    ref = not layout.faithful
    m = _MLeaf(
        alpha=jnp.zeros((), jnp.float32),
        ref=per_block(bs * layout.m_ref_bits // 8, jnp.uint8) if ref else empty(jnp.uint8),
        levels=per_block(layout.m_ref_bits, jnp.float16) if ref else empty(jnp.float16),
        signs=per_block(bs // 8, jnp.uint8),
        scales=jnp.zeros_like(zb[..., 0], dtype=jnp.float16),
        err=zb if layout.error_feedback else empty(jnp.float32))
  else:
    m = _MLeaf(empty(jnp.float32), empty(jnp.uint8), empty(jnp.float16), empty(jnp.uint8),
               empty(jnp.float16), empty(jnp.float32))
  return mu, nu, v, m


def _leaf_update(g, mu, nu, v, ms: _MLeaf, seed, count, **kw):
  """One tensor: ``(update, mu, nu, (codes, bounds), m fields)`` (leaf layout).

  Blocked tensors are computed on ``[*lead, nb, bs]`` blocks by
  :func:`_blocks_update`; dense ``mu``/``nu`` are stored in the parameter's shape.
  """
  layout = kw["layout"]
  shape, bs = tuple(g.shape), layout.block_size
  mc, vc = layout.m_compressed(shape), layout.v_compressed(shape)
  if not (mc or vc):
    u, mu, nu = moments.dense_adam(g, mu, nu, b1=kw["b1"], b2=kw["b2"], eps=kw["eps"],
                                   count=count)
    return u, mu, nu, v, ms

  spec = lay.work_spec(g, bs)  # None unless the last axis' shards are not whole blocks
  to_work = lambda x: lay.reshard(x, spec)
  to_param = (lambda x: x) if spec is None else (
      lambda x: lay.reshard(x, jax.sharding.PartitionSpec(*lay.explicit_spec(g))))
  blocks = lambda x: lay.row_blocks(to_work(x), bs)
  unblock = lambda xb: to_param(lay.from_row_blocks(xb, shape[-1]))
  ub, mu_b, nu_b, v, ms = _blocks_update(
      blocks(g.astype(jnp.float32)), mu if mc else blocks(mu), nu if vc else blocks(nu), v, ms,
      seed, count, mc=mc, vc=vc, red=WHOLE, **kw)
  return unblock(ub), mu if mc else unblock(mu_b), nu if vc else unblock(nu_b), v, ms


def _blocks_update(gb, mu_b, nu_b, v, ms: _MLeaf, seed, count, *, mc, vc, red, layout, impl,
                   b1, b2, eps, null_pct, amp_pct, row_ids=None):
  """TurboAdam on blocks ``gb float32[..., nb, bs]`` of one tensor (``red=WHOLE``)
  or of many (a flat ``[NB, bs]`` buffer, ``red`` their :class:`Segments`).

  Returns ``(update, mu_b, nu_b, (codes, bounds), m fields)``: ``mu_b`` is
  ``m_t`` in blocks where m is dense (else unchanged), ``nu_b`` ``sqrt(v_t)``
  where v is dense. Computed in per-block units ``2^k`` (:func:`block_shift`):
  ``gs = g 2^-k``, ``m_t`` likewise. Everything here is per block or
  elementwise except the per-tensor reductions of ``red``. ``row_ids``
  (``int32[NB]``, flat buffers): each block's row in the unsharded buffer,
  which the v draws hash (default: its position in ``gb``).
  """
  rows_impl = kernels.rowblock_backend(impl, v_bits=layout.v_bits,
                                       ref_bits=layout.m_ref_bits, block_size=gb.shape[-1])
  if (mc and vc and isinstance(red, Segments) and not layout.faithful
      and not layout.error_feedback and rows_impl is not None):
    ub, v, ms = _rows_update(gb, v, ms, seed, count, red=red, layout=layout, impl=rows_impl,
                             b1=b1, b2=b2, eps=eps, null_pct=null_pct, amp_pct=amp_pct,
                             row_ids=row_ids)
    return ub, mu_b, nu_b, v, ms
  bc1 = 1.0 - jnp.asarray(b1, jnp.float32) ** count
  bc2 = 1.0 - jnp.asarray(b2, jnp.float32) ** count
  units = mc and not layout.faithful  # m coded in units of sqrt(v^)

  if vc:
    codes, bounds = v
    k = block_shift(gb, bounds[..., 1])                           # [..., nb]
    unit = jnp.exp2(-k)[..., None]
    lo, hi = rows.shifted_bounds(bounds, k)
    if units:
      sqrt_v_prev = decode_sqrt_v(codes, lo, hi, layout.v_bits)
  else:
    unit = 1.0
    s_prev = nu_b
    if units:
      sqrt_v_prev = s_prev
  gs = gb * unit

  if not mc:
    m_prev = mu_b * unit
  elif layout.faithful:  # alpha g_t + delta^, delta^ stored in units of m
    m_prev = red.elems(ms.alpha) * gs + costate_decode_delta(ms.signs, ms.scales) * unit
  else:
    m_prev = decode_m(ms, gs, layout, red) * sqrt_v_prev
  m_t = b1 * m_prev + (1.0 - b1) * gs

  if vc:
    scalars = jnp.stack([jnp.asarray(x, jnp.float32) for x in (b2, eps, bc1, bc2)])
    ub, codes, lo, hi = _fused(gs, m_t, codes, lo, hi, scalars, seed, layout, impl, row_ids)
    bounds = jnp.stack([x.astype(jnp.float32) + 2.0 * k for x in (lo, hi)], axis=-1)
    v = (codes, bounds.astype(jnp.float16))
    if units:
      sqrt_v_new = decode_sqrt_v(codes, lo, hi, layout.v_bits)
  else:
    s_new = moments.rms_moment(gb, s_prev, b2)                    # dense sqrt(v_t)
    ub = (m_t / bc1) / (s_new / jnp.sqrt(bc2) + eps)
    nu_b = s_new
    sqrt_v_new = s_new

  if not mc:
    mu_b = m_t / unit
  elif layout.faithful:
    ms = encode_m(m_t / unit, gb, ms, layout, null_pct, amp_pct, red)
  else:
    q = rows.ratio(m_t, sqrt_v_new, ratio_bound(b1, b2))
    ms = encode_m(q, gs, ms, layout, null_pct, amp_pct, red)
  return ub, mu_b, nu_b, v, ms


def _rows_update(gb, v, ms: _MLeaf, seed, count, *, red: Segments, layout, impl, b1, b2, eps,
                 null_pct, amp_pct, row_ids=None):
  """The default step (m and v compressed, CoState in units of ``sqrt(v^)``)
  of a flat ``[NB, bs]`` buffer as two row passes
  (:mod:`holojax.kernels.turbo_adam.rowblock_reference`): ``(update, (codes,
  bounds), m fields)``. Pass A updates v and the reference code and sums
  ``q r``, ``r r`` per block; ``alpha`` per tensor from those sums; pass B
  gives the CoState signs and block magnitudes ``c``; the scales from the
  quantiles of ``c`` (:func:`costate_scales`). ``impl``: "xla" (the ``jnp``
  rows), "mosaic" or "interpret" (the Mosaic GPU kernels, compiled or
  interpreted)."""
  old = rows.OldState(*v, ms.ref, ms.levels, ms.signs, ms.scales, red.blocks(ms.alpha))
  scalars = rows.step_scalars(b1, b2, eps, count)
  kw = dict(v_bits=layout.v_bits, ref_bits=layout.m_ref_bits, implementation=impl)
  a = kernels.rowblock_pass_a(gb, old, scalars, seed, **kw, row_ids=row_ids)
  rr = red.sum(a.rr)
  alpha = jnp.where(rr > 0, red.sum(a.qr) / jnp.where(rr > 0, rr, 1.0), 0.0)
  signs, c = kernels.rowblock_pass_b(gb, old, scalars, a, red.blocks(alpha), **kw)
  scales = costate_scales(c, null_pct, amp_pct, red)
  return a.u, (a.codes, a.bounds), _MLeaf(alpha.astype(jnp.float32), a.ref, a.levels, signs,
                                          scales, ms.err)


def _fused(gs, m_t, codes, lo, hi, scalars, seed, layout, impl, row_ids=None):
  """The kernel's fused v step on ``[*lead, nb, bs]`` blocks (``row_ids``: flat buffers)."""
  if impl == "xla" or gs.ndim == 2:
    return kernels.fused_v_update(gs, m_t, codes, lo, hi, scalars, seed, bits=layout.v_bits,
                                  implementation=impl, row_ids=row_ids)
  lead = gs.shape[:-1]
  flat = lambda a: a.reshape(math.prod(a.shape[:len(lead)]), *a.shape[len(lead):])
  u, c, l2, h2 = kernels.fused_v_update(flat(gs), flat(m_t), flat(codes), flat(lo), flat(hi),
                                        scalars, seed, bits=layout.v_bits,
                                        implementation=impl)
  return (u.reshape(gs.shape), c.reshape(codes.shape), l2.reshape(lo.shape),
          h2.reshape(hi.shape))


def _state_shapes_ok(g, mu, nu, v, layout) -> bool:
  """Whether the per-leaf state was built for a parameter of ``g``'s shape."""
  shape = tuple(g.shape)
  shape_of = lambda x: tuple(x.shape) if hasattr(x, "shape") else None
  mc, vc = layout.m_compressed(shape), layout.v_compressed(shape)
  if (not mc and shape_of(mu) != shape) or (not vc and shape_of(nu) != shape):
    return False
  if vc:
    want = shape[:-1] + (lay.num_blocks(shape[-1], layout.block_size), 2)
    return shape_of(v[1]) == want
  return True


def _stack_update(g, state, key, count, hyper):
  """``_leaf_update`` of each layer ``j`` of a stacked ``g [layers, ...]`` (seed
  ``fold_in(key, j)``), one layer after another. The loop writes layer j's
  update over ``g[j]`` and its new state over ``state[j]`` (in-place dynamic
  updates of the loop's buffers), so the update needs one layer's scratch
  memory and no second stack-sized buffer.

  Layer j's inputs arrive as loop carries, sliced at the end of the previous
  iteration from the buffers already written, so nothing in an iteration
  reads the stack that its in-place write replaces. (Slicing layer j inside
  iteration j made XLA copy the whole stack every iteration: in its memory
  analysis, two stack-sized temporaries per stacked tensor.)"""
  at = lambda t, j: jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, j, 0, False), t)
  put = lambda t, new, j: jax.tree.map(
      lambda x, y: jax.lax.dynamic_update_index_in_dim(x, y.astype(x.dtype), j, 0), t, new)
  layers = g.shape[0]

  def body(j, carry):
    buf, st, g_j, st_j = carry
    seed = quant.seed_from_key(jax.random.fold_in(key, j))
    u, *new = _leaf_update(g_j, *st_j, seed, count, **hyper)
    buf, st = put(buf, u, j), put(st, tuple(new), j)
    nxt = jnp.minimum(j + 1, layers - 1)
    return buf, st, at(buf, nxt), at(st, nxt)

  state = tuple(state)
  buf, (mu, nu, v, ms), *_ = jax.lax.fori_loop(
      0, layers, body, (g, state, at(g, 0), at(state, 0)))
  return buf, mu, nu, v, ms


def _stack_shapes_ok(g, mu, nu, v, ms, layout) -> bool:
  """Whether the state was built for a stack (``scanned``) of ``g``'s layers."""
  layers = g.shape[0] if g.ndim else None
  state = jax.tree.leaves((mu, nu, v, ms))
  if layers is None or any(x.ndim == 0 or x.shape[0] != layers for x in state):
    return False
  one = lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
  return _state_shapes_ok(one(g), *jax.tree.map(one, (mu, nu, v)), layout)


# ----------------------------------------------------------------------------
# The flat layout: one buffer per group, whatever the number of tensors.


class _Part(NamedTuple):
  """One flat buffer (static): the tensors ``idx`` of group ``kind`` ("dense" or
  a :data:`FLAT_GROUPS` name) that mesh ``axes`` split into equal pieces
  (``()``: whole on every device). Unsharded, a group is one part."""
  kind: str
  axes: tuple[str, ...]
  idx: tuple[int, ...]

  @property
  def key(self) -> str:
    """Its key in :attr:`ScaleByTurboAdamFlatState.groups`: the group's name, and
    ``@`` its mesh axes when split (``"mv@fsdp"``, ``"dense@data+fsdp"``)."""
    return self.kind if not self.axes else f"{self.kind}@{'+'.join(self.axes)}"


def _flat_parts(xs, layout: TurboAdamLayout):
  """Static plan of the flat layout of leaves ``xs`` (parameters or gradients):
  ``(groups, parts, specs)``: :meth:`TurboAdamLayout.flat_plan`'s groups of the
  whole tree (they set the seeds and the unsharded rows), the buffers
  (:class:`_Part`, the dense one first) and each leaf's compute spec
  (:func:`holojax.optim.layout.flat_split`)."""
  dense, groups = layout.flat_plan([tuple(x.shape) for x in xs])
  kinds = {**({"dense": dense} if dense else {}), **groups}
  parts, specs = {}, [None] * len(xs)
  for kind, idx in kinds.items():
    for i in idx:
      specs[i], axes = lay.flat_split(xs[i], None if kind == "dense" else layout.block_size)
      parts.setdefault((kind, axes), []).append(i)
  return groups, [_Part(k, a, tuple(idx)) for (k, a), idx in parts.items()], specs


def _mesh_entry(x, axes):
  """``(mesh, D, spec entry)`` of a buffer split over ``axes`` on ``x``'s mesh."""
  mesh = jax.typeof(x).sharding.mesh
  return mesh, math.prod(mesh.shape[a] for a in axes), axes[0] if len(axes) == 1 else axes


def _per_block(f, grp: TurboFlatGroup, alpha=lambda a: a) -> TurboFlatGroup:
  """``grp`` with ``f`` applied to its per-block arrays, ``alpha`` to ``alpha``
  (per tensor)."""
  out = jax.tree.map(f, grp._replace(m=grp.m._replace(alpha=None)))
  return out._replace(m=out.m._replace(alpha=jax.tree.map(alpha, grp.m.alpha)))


def _init_group(nb: int, n: int, mc: bool, vc: bool, layout: TurboAdamLayout, lead=(),
                sharding=None) -> TurboFlatGroup:
  """Zero state of a group of ``n`` tensors holding ``nb`` row blocks in all
  (``lead=(D,)``: on each of ``D`` devices, the buffers of ``sharding``)."""
  bs, empty = layout.block_size, optax.MaskedNode()
  z = lambda k, dtype: jnp.zeros((*lead, nb, k), dtype, out_sharding=sharding)
  ref = not layout.faithful
  m = CoStateM(alpha=jnp.zeros((n,), jnp.float32),
               ref=z(bs * layout.m_ref_bits // 8, jnp.uint8) if ref else empty,
               levels=z(layout.m_ref_bits, jnp.float16) if ref else empty,
               signs=z(bs // 8, jnp.uint8),
               scales=jnp.zeros((*lead, nb), jnp.float16, out_sharding=sharding),
               err=z(bs, jnp.float32) if layout.error_feedback else empty)
  return TurboFlatGroup(
      mu=empty if mc else z(bs, jnp.float32), nu=empty if vc else z(bs, jnp.float32),
      v=PackedV(z(bs * layout.v_bits // 8, jnp.uint8), z(2, jnp.float16)) if vc
      else PackedV(empty, empty),
      m=m if mc else CoStateM(*(empty,) * len(CoStateM._fields)))


def _init_part(part: _Part, xs, specs, layout: TurboAdamLayout):
  """Zero state of ``part`` (``xs``, ``specs``: its leaves, their compute specs):
  the dense ``(mu, nu)`` (unsharded) or a :class:`TurboFlatGroup`, split parts
  ``[D, ...]`` per block with ``D`` (the devices along ``part.axes``) on axis 0."""
  local = [lay.piece_shape(x, s) for x, s in zip(xs, specs)]
  if not part.axes:
    if part.kind == "dense":
      n = sum(math.prod(s) for s in local)
      return jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32)
    return _init_group(sum(layout.row_blocks(s) for s in local), len(xs), *FLAT_GROUPS[part.kind],
                       layout)
  mesh, d, entry = _mesh_entry(xs[0], part.axes)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(entry))
  if part.kind == "dense":
    z = lambda: jnp.zeros((d, sum(math.prod(s) for s in local)), jnp.float32,
                          out_sharding=sharding)
    empty = optax.MaskedNode()
    return TurboFlatGroup(z(), z(), PackedV(empty, empty), CoStateM(*(empty,) * 6))
  return _init_group(sum(layout.row_blocks(s) for s in local), len(xs), *FLAT_GROUPS[part.kind],
                     layout, (d,), sharding)


def _refuse_kernels_when_split(parts, impl: str) -> None:
  if impl != "xla" and any(p.axes for p in parts):
    raise ValueError(f"turbo_adam: tree_layout='flat' with explicitly sharded parameters needs "
                     f"implementation='xla' (the kernels draw by buffer position), got {impl!r}")


def _refuse_kernels_on_sharded_leaves(paths_leaves, layout: TurboAdamLayout, impl: str) -> None:
  """Leaf layout: a kernel (``impl`` not "xla") runs on a whole tensor's blocks,
  so it refuses an explicitly sharded tensor whose v it would update
  (``ValueError`` naming the leaf; "xla" updates it shard by shard)."""
  if impl == "xla":
    return
  for path, x in paths_leaves:
    if layout.v_compressed(tuple(x.shape)) and lay.explicit_spec(x) is not None:
      raise ValueError(f"turbo_adam: parameter {jax.tree_util.keystr(path)} is explicitly "
                       f"sharded as {jax.sharding.PartitionSpec(*lay.explicit_spec(x))}; "
                       f"sharded parameters need implementation='xla' (the kernels update "
                       f"whole tensors), got {impl!r}")


def _init_flat(params, layout: TurboAdamLayout, impl: str = "xla"):
  """``(mu, nu, groups)`` of :class:`ScaleByTurboAdamFlatState`."""
  leaves = jax.tree.leaves(params)
  _, parts, specs = _flat_parts(leaves, layout)
  _refuse_kernels_when_split(parts, impl)
  mu = nu = optax.MaskedNode()
  groups = {}
  for part in parts:
    st = _init_part(part, [leaves[i] for i in part.idx], [specs[i] for i in part.idx], layout)
    if part.key == "dense":
      mu, nu = st
    else:
      groups[part.key] = st
  return mu, nu, groups


def _split(x_flat: jax.Array, sizes) -> list[jax.Array]:
  """Consecutive pieces of ``sizes`` along the first axis (static slices)."""
  ends = np.cumsum(sizes)
  return [x_flat[e - n:e] for e, n in zip(ends, sizes)]


def _state_like(got, want) -> bool:
  """Whether state ``got`` has ``want``'s structure and shapes."""
  shapes = lambda t: (jax.tree.structure(t), [tuple(x.shape) for x in jax.tree.leaves(t)])
  return shapes(got) == shapes(want)


def _unsharded_rows(nbs, starts) -> jax.Array:
  """``int32[sum nbs]``: rows ``starts[i] + arange(nbs[i])``, tensor after tensor
  (computed at run time: the offsets are opaque to XLA)."""
  starts = jax.lax.optimization_barrier(jnp.asarray(np.asarray(starts, np.int32)))
  return jnp.concatenate([starts[i] + jnp.arange(n, dtype=jnp.int32) for i, n in enumerate(nbs)])


def _local_rows(local_shape, shape, spec, start: int, bs: int) -> jax.Array:
  """Inside ``shard_map``: ``int32[blocks]``, the rows in the unsharded flat buffer
  of this device's blocks (row-major) of a tensor of ``shape`` sharded as
  ``spec`` (its piece: ``local_shape``), whose first block is row ``start``: the
  same reshapes as the tensor's, applied to iotas offset by the device's index."""
  dims = (*local_shape[:-1], lay.num_blocks(local_shape[-1], bs))
  whole = (*shape[:-1], lay.num_blocks(shape[-1], bs))
  strides = np.cumprod((1,) + whole[:0:-1])[::-1]
  rows = jnp.full(dims, start, jnp.int32)
  for d, entry in enumerate(spec):
    i = jax.lax.broadcasted_iota(jnp.int32, dims, d)
    if lay.entry_axes(entry):
      i = i + jax.lax.axis_index(lay.entry_axes(entry)) * dims[d]
    rows = rows + i * int(strides[d])
  return rows.reshape(-1)


def _split_update(part: _Part, xs, grp: TurboFlatGroup, seed, count, starts, kw):
  """Updates (a list like ``xs``) and the new state of a split ``part``, each
  device on its own pieces (``jax.shard_map``): its blocks concatenated
  tensor after tensor into ``[NB_local, bs]`` and updated by
  :func:`_blocks_update` with :class:`Segments` all-reduced over
  ``part.axes`` and the v draws at the blocks' unsharded rows (from
  ``starts``, each tensor's first row in its group's unsharded buffer): the
  unsharded update, summed in another order."""
  layout = kw["layout"]
  bs = layout.block_size
  mesh, d, entry = _mesh_entry(xs[0], part.axes)
  P = jax.sharding.PartitionSpec
  specs = [lay.explicit_spec(x) for x in xs]
  shapes = [tuple(x.shape) for x in xs]
  in_specs = [P(*s) for s in specs]
  grp_specs = _per_block(lambda _: P(entry), grp, lambda _: P())
  traced = {k: v for k, v in kw.items() if isinstance(v, jax.Array)}
  fixed = {k: v for k, v in kw.items() if k not in traced}

  def local(xs, grp, seed, count, traced):
    hyper = {**fixed, **traced}
    grp = _per_block(lambda a: a[0], grp)
    if part.kind == "dense":
      us, mu, nu = moments.dense_adam_concat(xs, grp.mu, grp.nu, b1=hyper["b1"], b2=hyper["b2"],
                                             eps=hyper["eps"], count=count)
      new = grp._replace(mu=mu, nu=nu)
    else:
      nbs = [layout.row_blocks(x.shape) for x in xs]
      gb = jnp.concatenate([lay.row_blocks(x.astype(jnp.float32), bs).reshape(-1, bs)
                            for x in xs])                          # [NB_local, bs]
      rows = jnp.concatenate([_local_rows(x.shape, shape, s, start, bs)
                              for x, shape, s, start in zip(xs, shapes, specs, starts)])
      red = Segments.of(nbs, axes=part.axes, shards=d)
      ub, mu_b, nu_b, v, ms = _blocks_update(gb, grp.mu, grp.nu, tuple(grp.v), _MLeaf(*grp.m),
                                             seed, count, mc=FLAT_GROUPS[part.kind][0],
                                             vc=FLAT_GROUPS[part.kind][1], red=red,
                                             row_ids=rows, **hyper)
      new = TurboFlatGroup(mu_b, nu_b, PackedV(*v), CoStateM(*ms))
      us = [lay.from_row_blocks(u.reshape(*x.shape[:-1], -1, bs), x.shape[-1])
            for u, x in zip(_split(ub, nbs), xs)]
    return us, _per_block(lambda a: a[None], new)

  # Traced inside _flat_update_jit: one program even when called eagerly.
  return jax.shard_map(
      local, mesh=mesh, in_specs=(in_specs, grp_specs, P(), P(), jax.tree.map(lambda _: P(), traced)),
      out_specs=(in_specs, grp_specs))(xs, grp, seed, count, traced)


def _flat_update(gs: list, state: ScaleByTurboAdamFlatState, sub, count, **kw):
  """Updates (a list like ``gs``) and ``(mu, nu, groups)`` of the flat layout.

  The dense tensors are one raveled buffer; each group's gradients are
  concatenated into ``[NB, bs]`` row blocks and updated in one
  :func:`_blocks_update` with per-tensor reductions over :class:`Segments`
  (one fused v step, one seed for the whole buffer), then split back.
  Explicitly sharded tensors go to split buffers (:func:`_split_update`),
  one per group and set of mesh axes, with the group's seed; the rest of
  such a group then draws at its unsharded rows too.
  """
  layout = kw["layout"]
  bs = layout.block_size
  groups, parts, specs = _flat_parts(gs, layout)
  _refuse_kernels_when_split(parts, kw["impl"])
  mismatch = ValueError("turbo_adam: the gradients do not match the optimizer state built at "
                        "init (tree_layout='flat': same tree, shapes and shardings needed)")
  keys = sorted(p.key for p in parts if p.key != "dense")
  if keys != sorted(state.groups):
    raise mismatch
  seeds = {k: quant.seed_from_key(jax.random.fold_in(sub, j)) for j, k in enumerate(groups)}
  starts = {}
  for idx in groups.values():
    nbs = [layout.row_blocks(gs[i].shape) for i in idx]
    starts.update(zip(idx, (np.cumsum(nbs) - nbs).tolist()))
  split_kinds = {p.kind for p in parts if p.axes}

  out = [None] * len(gs)
  mu, nu = state.mu, state.nu
  new_groups = {}
  for part in parts:
    xs = [lay.reshard(gs[i], specs[i]) for i in part.idx]
    grp = (mu, nu) if part.key == "dense" else state.groups[part.key]
    if not _state_like(grp, jax.eval_shape(
        lambda: _init_part(part, xs, [None] * len(xs), layout))):
      raise mismatch
    if part.axes:
      us, new_groups[part.key] = _split_update(part, xs, grp, seeds.get(part.kind), count,
                                               [starts.get(i) for i in part.idx], kw)
    elif part.kind == "dense":
      us, mu, nu = moments.dense_adam_concat(xs, mu, nu, b1=kw["b1"], b2=kw["b2"],
                                             eps=kw["eps"], count=count)
    else:
      mc, vc = FLAT_GROUPS[part.kind]
      nbs = [layout.row_blocks(x.shape) for x in xs]
      gb = jnp.concatenate([lay.row_blocks(x.astype(jnp.float32), bs).reshape(-1, bs)
                            for x in xs])                            # [NB, bs]
      rows = (_unsharded_rows(nbs, [starts[i] for i in part.idx])
              if part.kind in split_kinds else None)
      ub, mu_b, nu_b, v, ms = _blocks_update(gb, grp.mu, grp.nu, tuple(grp.v), _MLeaf(*grp.m),
                                             seeds[part.kind], count, mc=mc, vc=vc,
                                             red=Segments.of(nbs), row_ids=rows, **kw)
      new_groups[part.key] = TurboFlatGroup(mu_b, nu_b, PackedV(*v), CoStateM(*ms))
      us = [lay.from_row_blocks(u.reshape(*x.shape[:-1], -1, bs), x.shape[-1])
            for u, x in zip(_split(ub, nbs), xs)]
    for i, u in zip(part.idx, us):
      own = lay.explicit_spec(gs[i])
      out[i] = u if specs[i] is None else lay.reshard(u, jax.sharding.PartitionSpec(*own))
  return out, mu, nu, new_groups


@functools.partial(jax.jit, static_argnames=("fixed",))
def _flat_update_jit(gs: list, state: ScaleByTurboAdamFlatState, sub, count, traced: dict,
                     fixed: tuple):
  """:func:`_flat_update` as one program (``fixed``: the static hyperparameters
  as sorted ``(name, value)`` pairs, ``traced``: the array ones, e.g. from
  ``optax.inject_hyperparams``). Called eagerly (``nnx.Optimizer.update``
  outside ``nnx.jit``) it runs as one compiled program instead of op by op;
  under an outer ``jit`` XLA inlines it (the same program as before)."""
  return _flat_update(gs, state, sub, count, **dict(fixed), **traced)


def scale_by_turbo_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                        block_size: int = 128, v_bits: int = 4, compress_m: bool = True,
                        compress_v: bool = True, null_pct: float = 0.10,
                        amp_pct: float = 0.90, error_feedback: bool = False,
                        min_m_compress_elements: int = 4096, faithful: bool = False,
                        seed: int = 0, m_ref_bits: int = 2,
                        implementation: str | None = None, tree_layout: str = "leaf",
                        scanned: Any = None) -> optax.GradientTransformationExtraArgs:
  """Rescales updates by TurboAdam's compressed moments (see module docstring).

  Args:
    b1, b2, eps: Adam's decay rates and denominator epsilon.
    block_size: elements per quantisation block along the last axis
      (positive multiple of 8).
    v_bits: bits per v code, one of 2, 3, 4, 6, 8.
    compress_m / compress_v: compress the first / second moment.
    null_pct, amp_pct: CoState block-magnitude quantiles, ``0 <= null < amp <= 1``.
    error_feedback: carry the CoState coding error (float32 buffer).
    min_m_compress_elements: smaller tensors keep m dense float32.
    faithful: the original CoState (decoded with the current gradient).
    seed: seed of the stochastic-rounding key (a runtime value: it only
      initialises ``key`` in the state).
    m_ref_bits: bits of the stored reference code of m (1 or 2; default mode).
    implementation: backend of the fused v step: None (the default,
      ``"xla"``), ``"xla"``, ``"mosaic"`` (Hopper), ``"triton"``,
      ``"interpret"``, ``"pallas"`` (the compiled Pallas GPU backends:
      ``"mosaic"`` on Hopper, else ``"triton"``) or a sequence tried in order; see
      :func:`holojax.kernels.turbo_adam.fused_v_update`. Chosen once, here.
      With ``tree_layout="flat"``, "mosaic" and "interpret" also run the
      default "mv" group's whole step in the Mosaic GPU row kernels
      (compiled / interpreted; :func:`holojax.kernels.turbo_adam.rowblock_backend`).
    tree_layout: ``"leaf"`` (the default: a state per tensor, sharded like
      it) or ``"flat"`` (blocked tensors' states concatenated into a few
      buffers, one update whatever the number of tensors; under explicit
      sharding, a buffer per group and set of mesh axes, split so that each
      device updates and stores its own shards' blocks with no gather, same
      update as unsharded up to float summation order; "xla" implementation
      only then). See the module docstring.
    scanned: which parameters stack the layers of a scanned model along axis 0
      (``nnx.scan`` / ``nnx.vmap``, e.g. ``Llama(scan_layers=True)``'s
      ``blocks``): None (none), a bool (all), a pytree prefix of bools or a
      callable ``params -> such a pytree``. Each layer of such a tensor is
      its own tensor, as in the unscanned model (its own statistics and
      seed), updated one layer after another in a loop that writes each
      layer's update over its gradient, so the update's temporaries are one
      layer's, not the stack's. Leaf layout only; axis 0 must not be sharded.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Shape-setting arguments
    (:data:`STATIC_ARGS`, exported as
    ``holojax.optim.TURBO_ADAM_STATIC_ARGS``) must be ``static_args`` under
    ``optax.inject_hyperparams``::

      optax.inject_hyperparams(turbo_adam, static_args=STATIC_ARGS)(learning_rate=1e-3)

  Raises:
    ValueError: an argument is out of range, or (at ``update``) a gradient's
      shape does not match its parameter (the message names the leaf), or
      (``tree_layout="flat"``) the gradients' tree, shapes or shardings do not
      match the state's, or a kernel ``implementation`` meets explicitly
      sharded parameters.
    TypeError: an argument has the wrong type (``v_bits=4.0``, a string
      rate), or (at ``init``) a parameter is not floating point.
  """
  layout = TurboAdamLayout(block_size, v_bits, compress_m, compress_v, error_feedback,
                           min_m_compress_elements, faithful, m_ref_bits, tree_layout)
  if scanned is not None and tree_layout != "leaf":
    raise ValueError(f"scanned={scanned!r} needs tree_layout='leaf' (got {tree_layout!r})")
  validate.check_real("b1", b1, 0.0, 1.0, hi_open=True)
  validate.check_real("b2", b2, 0.0, 1.0, hi_open=True)
  validate.check_real("eps", eps, 0.0)
  validate.check_real("null_pct", null_pct, 0.0, 1.0, hi_open=True)
  validate.check_real("amp_pct", amp_pct, 0.0, 1.0, lo_open=True)
  validate.check_seed("seed", seed)
  if not isinstance(null_pct, jax.core.Tracer) and not isinstance(amp_pct, jax.core.Tracer) \
      and float(null_pct) >= float(amp_pct):
    raise ValueError(f"null_pct={null_pct!r} must be < amp_pct={amp_pct!r} "
                     "(need 0 <= null_pct < amp_pct <= 1)")
  impl = kernels.select_implementation(bits=v_bits, block_size=block_size,
                                       implementation=implementation)
  if impl != "xla" and not compress_v:
    raise ValueError(f"implementation={implementation!r} picks the kernel {impl!r}, which "
                     "needs compress_v=True (it updates the packed v)")

  hyper = dict(layout=layout, impl=impl, b1=b1, b2=b2, eps=eps, null_pct=null_pct,
               amp_pct=amp_pct)

  def init_fn(params):
    validate.check_float_params("turbo_adam", params)
    if layout.tree_layout == "flat":
      return ScaleByTurboAdamFlatState(
          jnp.zeros((), jnp.int32), jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32),
          *_init_flat(params, layout, impl))
    paths_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    _refuse_kernels_on_sharded_leaves(paths_leaves, layout, impl)
    stacks = jax.tree.leaves(lay.leaf_labels(params, scanned))
    leaves = []
    for (path, p), stack in zip(paths_leaves, stacks):
      if stack:
        lay.refuse_sharded_stack(p, "turbo_adam", path)
        leaves.append(jax.lax.map(lambda x: _init_leaf(x, layout), p))
      else:
        leaves.append(_init_leaf(p, layout))
    treedef = jax.tree.structure(params)
    field = lambda f: treedef.unflatten([f(x) for x in leaves])
    return ScaleByTurboAdamState(
        count=jnp.zeros((), jnp.int32),
        key=jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32),
        mu=field(lambda x: x[0]), nu=field(lambda x: x[1]),
        v=PackedV(field(lambda x: x[2][0]), field(lambda x: x[2][1])),
        m=CoStateM(*[field(lambda x, i=i: x[3][i]) for i in range(6)]))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is not None:
      validate.check_param_shapes("turbo_adam", updates, params)
    count = optax.safe_increment(state.count)
    key, sub = jax.random.split(jax.random.wrap_key_data(state.key))
    key_data = jax.random.key_data(key).astype(jnp.uint32)
    if layout.tree_layout == "flat":
      gs, treedef = jax.tree.flatten(updates)
      traced = {k: v for k, v in hyper.items() if isinstance(v, (jax.Array, np.ndarray))}
      fixed = tuple(sorted((k, v) for k, v in hyper.items() if k not in traced))
      us, mu, nu, groups = _flat_update_jit(gs, state, sub, count, traced, fixed)
      return (treedef.unflatten([u.astype(g.dtype) for u, g in zip(us, gs)]),
              ScaleByTurboAdamFlatState(count, key_data, mu, nu, groups))

    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    _refuse_kernels_on_sharded_leaves(paths_leaves, layout, impl)
    flat = lambda tree: treedef.flatten_up_to(tree)
    mus, nus = flat(state.mu), flat(state.nu)
    vs = list(zip(flat(state.v.codes), flat(state.v.bounds)))
    ms = [_MLeaf(*x) for x in zip(*[flat(f) for f in state.m])]

    stacks = treedef.flatten_up_to(lay.leaf_labels(updates, scanned))
    out = []
    for i, (path, g) in enumerate(paths_leaves):
      state_i = (mus[i], nus[i], vs[i], ms[i])
      if stacks[i]:
        lay.refuse_sharded_stack(g, "turbo_adam", path)
        if not _stack_shapes_ok(g, *state_i, layout):
          validate.raise_state_mismatch("turbo_adam", path, g.shape)
        u, mu, nu, v, m = _stack_update(g, state_i, jax.random.fold_in(sub, i), count, hyper)
      else:
        if not _state_shapes_ok(g, *state_i[:3], layout):
          validate.raise_state_mismatch("turbo_adam", path, g.shape)
        seed_i = quant.seed_from_key(jax.random.fold_in(sub, i))
        u, mu, nu, v, m = _leaf_update(g, *state_i, seed_i, count, **hyper)
      out.append((u.astype(g.dtype), mu, nu, v, m))

    field = lambda f: treedef.unflatten([f(x) for x in out])
    new_state = ScaleByTurboAdamState(
        count=count, key=key_data,
        mu=field(lambda x: x[1]), nu=field(lambda x: x[2]),
        v=PackedV(field(lambda x: x[3][0]), field(lambda x: x[3][1])),
        m=CoStateM(*[field(lambda x, i=i: x[4][i]) for i in range(6)]))
    return field(lambda x: x[0]), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def turbo_adam(learning_rate: optax.ScalarOrSchedule = 1e-3, b1: float = 0.9,
               b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
               block_size: int = 128, v_bits: int = 4, compress_m: bool = True,
               compress_v: bool = True, null_pct: float = 0.10, amp_pct: float = 0.90,
               error_feedback: bool = False, min_m_compress_elements: int = 4096,
               faithful: bool = False, seed: int = 0, m_ref_bits: int = 2,
               implementation: str | None = None, mask: Any = None,
               tree_layout: str = "leaf", scanned: Any = None
               ) -> optax.GradientTransformationExtraArgs:
  """TurboAdam(W): ``apply_if_finite(chain(scale_by_turbo_adam, add_decayed_weights, -lr))``.

  With ``compress_m=False, compress_v=False`` this is ``optax.adamw`` (with
  a skip on non-finite gradients). A non-finite gradient skips the whole
  step: no decay, no schedule step, no state change; the returned state's
  ``total_notfinite`` counts the skips. See :func:`scale_by_turbo_adam`
  for the arguments and the module docstring for the maths and the state
  layout; ``mask`` is ``optax.add_decayed_weights``'.

  Example::

    >>> import jax.numpy as jnp, optax
    >>> opt = optax.chain(optax.clip_by_global_norm(1.0), turbo_adam(1e-3, weight_decay=0.01))
    >>> state = opt.init({"w": jnp.zeros((256, 256))})
    >>> int(state[1].total_notfinite)
    0
  """
  validate.check_scalar_or_schedule("learning_rate", learning_rate)
  validate.check_real("weight_decay", weight_decay, 0.0)
  return moments.skip_non_finite(optax.chain(
      scale_by_turbo_adam(b1=b1, b2=b2, eps=eps, block_size=block_size, v_bits=v_bits,
                          compress_m=compress_m, compress_v=compress_v, null_pct=null_pct,
                          amp_pct=amp_pct, error_feedback=error_feedback,
                          min_m_compress_elements=min_m_compress_elements,
                          faithful=faithful, seed=seed, m_ref_bits=m_ref_bits,
                          implementation=implementation, tree_layout=tree_layout,
                          scanned=scanned),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate)))
