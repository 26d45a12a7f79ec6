"""HoloAdam: Adam whose first moment is a holographic (FFT, phase-key) sketch.

A compressed parameter of shape ``(*lead, L)`` is sketched row by row: each
row (last axis) is zero-padded and cut into ``n = ceil(L / h)`` chunks
``x_c`` of length ``h = ceil(L / holo_ratio)``. Head ``e`` binds chunk ``c``
to a unit-phasor key ``K_{e,c}`` (a row of a fixed codebook) in the Fourier
domain and superposes the row's chunks into one complex trace of length
``h``::

  trace_e = sum_c FFT(x_c) (x) K_{e,c}                     complex[h] per row
  hm_e   <- b1 hm_e + (1 - b1) trace_e                     (linear EMA)
  x^_c    = (1/heads) sum_e Re IFFT(hm_e (x) conj K_{e,c})  unit gain

Since ``|K| = 1`` the own chunk comes back exactly (``K conj K = 1``); every
other chunk adds crosstalk: ``Re IFFT`` of a random-phase spectrum keeps
half of its power, so per head noise/signal power is ``(n - 1) / 2`` and
heads with independent keys average it down::

  cos(x^, x) ~ 1 / sqrt(1 + (n - 1) / (2 heads))

The crosstalk is fixed by the keys, so it does *not* average out over steps.
Rows never mix, so the trace keeps the parameter's leading axes and is
sharded like it (:mod:`holojax.optim.layout`).

**Preconditioned sketch** (default). Crosstalk lands on every element of a
row at the row's average power, so superposing ``g`` itself lets chunks of
large gradients swamp chunks of small ones, which Adam then divides by their
small ``sqrt(v)`` (rows scaled over 4 decades gave updates with cosine 0.000
to Adam's, one row 2,226x Adam's size). HoloAdam therefore sketches the
gradient in units of its block RMS, so every element enters at a comparable
scale::

  s_t = sqrt(v_t / (1 - b2^t))          per v block, repeated per element
  p_t = g_t / s_t                        |p| <= sqrt(v_block_size / (1 - b2))
  m_used = b1 p^_{t-1} + (1 - b1) p_t    (p^ retrieved from the trace of p)
  u   = (m_g / (1 - b1^t)) s_t / (s_t + eps)

which is Adam's ``(m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`` with the
momentum taken over normalised gradients (``s`` moves slowly, ``b2 = 0.999``).

Rank: retrieval is the adjoint of the sketch, and the sketch keeps ``2 heads
h ~ 2 heads L / holo_ratio`` real numbers per row, so ``p^`` lies in a
*fixed* subspace of dimension at most ``2 heads / holo_ratio`` of the
parameter space (0.4 for the balanced preset). Updates from ``p^`` alone
never move the other directions; the default therefore sketches only the
history and uses the current gradient exactly (``exact_grad=True``, the
``m_used`` above; ``exact_grad=False`` uses ``p^_t``).

Codebook: ``K[r, j] = exp(2 pi i u(seed, r * codebook_width + j))`` for
``r < codebook_size``, ``j < codebook_width``, ``u`` a counter-based uniform
(:func:`holojax.kernels.quant.uniform_from_index`) and ``seed`` drawn from the
state's ``key``. It is *computed inside the update*, never stored; head
``e``, chunk ``c`` uses row ``(c + 13 e) mod codebook_size``, entries ``j mod
codebook_width``. A row has at most ``holo_ratio`` chunks; a codebook with
fewer rows than that, or whose heads ``d`` apart share rows (``13 d = 0 mod
codebook_size``), raises ``ValueError``.

Second moment: block root-mean-squares of ``g`` over ``v_block_size``
elements of a row (a partial last block over its real elements), stored as
the root so no gradient overflows (:mod:`holojax.optim.moments`)::

  rms_t = sqrt(b2 rms_{t-1}^2 + (1 - b2) blockmean(g^2))          float32

Resonance gate (default, scale-invariant; ``rms`` over the tensor)::

  a     = p (x) m / (rms(p) rms(m) + 1e-30)        (mean of a is cos(p, m))
  gamma = 0.5 + 0.5 tanh(a)
  rf    = resonance_factor * min(t / warmup_steps, 1)
  m_g   = m_used (x) (1 - rf + rf gamma)

``faithful=True`` reproduces the original formulas on the gradient itself
(no preconditioning): ``m_used = m^_t``, a gain ``1/sqrt(n)`` on the trace
(never undone), ``gamma = 0.5 + 0.5 tanh(5 g (x) m^)`` (not scale-invariant)
and ``u = sqrt(1 - b2^t) / (1 - b1^t) * clip(m_g, -2, 2) / (rms_t + eps)``;
chunks are cut per row here, where the original cut the flattened tensor
(same fidelity, other crosstalk partners).

Auto-configuration (default rule, overridable with ``compress``): a
parameter is compressed iff ``ndim >= 2``, ``N >= min_compress_size`` and it
is not embedding-like (2-D with ``shape[0] >= 8 * shape[1]``: a vocabulary
table, whose gradient is row-sparse). Dense parameters get exact Adam
(float32 ``m`` and ``sqrt(v)`` of the parameter's shape). Pass ``compress``
to decide per tensor.

Gradients of any float dtype are promoted to float32; updates come back in
the gradient's dtype. Non-finite gradients are handled by :func:`holo_adam`
(``optax.apply_if_finite`` around the whole chain), not here.

State layout, bytes: ``count`` int32, ``key`` uint32[2]; per compressed
parameter ``8 heads h`` (complex64 ``hm``) ``+ 4 ceil(L / vb)`` (``rms``) per
row, i.e. about ``64 heads / holo_ratio + 32 / vb`` bits/param; per dense
parameter ``8 N`` (64 bits/param).

Tree layout. ``tree_layout="leaf"`` (default) keeps a state per parameter
(``mu``/``nu`` pytrees like the parameters, sharded like them) and traces
the update once per tensor, so the program (and its compile time) grows
with the number of tensors. ``tree_layout="flat"`` groups the compressed
tensors by their shape flattened to ``[rows, L]`` and stacks each group::

  mu = (m_dense f32[D], hm_1 c64[k_1 rows_1, heads, h_1], ...)
  nu = (s_dense f32[D], rms_1 f32[k_1 rows_1, ceil(L_1 / vb)], ...)

(``D`` elements of all dense tensors concatenated, ``k_i`` tensors in
group ``i``, in order of first appearance in the tree). An update stacks
each group's gradients ``[k, rows, L]``, runs the maths above once (one FFT,
one key set, one retrieval), and splits the updates back; the dense tensors
get one exact Adam on their concatenation. A model of repeated layers has a
few groups whatever its depth, and the program holds one copy of the maths
per group (the bytes and the bits/param are the leaf layout's). The maths
are identical: the keys depend on chunk and head only, never on the tensor,
so both layouts use the same keys, and the gate's ``rms`` is taken per
tensor (over the group's rows of that tensor); updates agree to float
rounding. Explicitly sharded parameters (FSDP) group only with tensors of
the same shape *and* compute spec (the leaf layout's: a last axis whose
shards are not whole rows is moved to the first leading axis it divides, an
all-to-all there and back); such a group is stacked unflattened, ``[k,
*lead, L]``, and its state ``[k, *lead, heads, h]`` / ``[k, *lead, nb]`` is
sharded like its members with ``None`` on the new axis, so stacking and
splitting stay on each device, each device sketches its own rows
(:func:`holojax.optim.layout.per_shard`, as the leaf layout: XLA would
gather the FFTs' operands otherwise), and only
the gate's per-tensor sums are all-reduced (sharded dense tensors: a stacked
``[k, *shape]`` exact Adam per shape and spec, after the groups).
Unsharded or replicated trees, and automatic (``jit``) sharding, get the
layout above unchanged. The group of each tensor is recomputed from the
gradients' shapes and shardings at every update (a callable
``compress`` is then called on the gradients), so the state holds arrays
only.

Example::

  >>> import jax, jax.numpy as jnp, optax
  >>> params = {"w": jnp.ones((64, 128)), "b": jnp.zeros((128,))}
  >>> opt = holo_adam(1e-2, min_compress_size=1024)
  >>> state = opt.init(params)
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> updates, state = opt.update(grads, state, params)
  >>> updates["w"].shape, updates["w"].dtype
  ((64, 128), dtype('float32'))

References:
  Kingma & Ba, Adam (2015); Plate, Holographic Reduced Representations
  (1995); HoloAdam README (seed 000 of this project).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from holojax.optim import layout as lay
from holojax.kernels import quant
from holojax.optim import moments, validate

# Arguments that set shapes or the code path: static under
# ``optax.inject_hyperparams(holo_adam, static_args=STATIC_ARGS)``. (``compress``
# may be a callable, which inject_hyperparams would otherwise call as a schedule.)
STATIC_ARGS = ("holo_ratio", "v_block_size", "heads", "min_compress_size", "codebook_size",
               "codebook_width", "fft_chunk_size", "faithful", "compress", "exact_grad",
               "tree_layout")


HOLO_ADAM_PRESETS: dict[str, dict[str, int]] = {
    "max": dict(holo_ratio=50, heads=2),
    "balanced": dict(holo_ratio=20, heads=4),
    "conservative": dict(holo_ratio=10, heads=8),
}

KEY_HEAD_STRIDE = 13  # codebook row offset between heads (as the original)


class ScaleByHoloAdamState(NamedTuple):
  """State of :func:`scale_by_holo_adam`."""
  count: jax.Array  # int32[], steps taken
  key: jax.Array    # uint32[2] (raw key data): the codebook's seed, never split
  mu: Any           # per leaf: complex64[*lead, heads, h] trace, or float32[param shape]
  nu: Any           # per leaf: float32[*lead, ceil(L / v_block_size)] block rms of g,
                    #   or float32[param shape] sqrt(v) (dense)


@dataclasses.dataclass(frozen=True)
class HoloLayout:
  """Static (shape-setting) configuration, validated in ``__post_init__``."""
  holo_ratio: int = 20
  v_block_size: int = 32
  heads: int = 4
  min_compress_size: int = 8192
  codebook_size: int = 256
  codebook_width: int = 8192
  fft_chunk_size: int = 2_000_000
  faithful: bool = False
  exact_grad: bool = True
  tree_layout: str = "leaf"

  def __post_init__(self):
    validate.static_choice("tree_layout", self.tree_layout, lay.TREE_LAYOUTS)
    for name in ("holo_ratio", "v_block_size", "heads", "codebook_size", "codebook_width",
                 "fft_chunk_size"):
      validate.static_int(name, getattr(self, name), 1)
    validate.static_int("min_compress_size", self.min_compress_size, 0)
    for name in ("faithful", "exact_grad"):
      validate.static_bool(name, getattr(self, name))
    # A row has ceil(L / ceil(L / holo_ratio)) <= holo_ratio chunks.
    if self.codebook_size < self.holo_ratio:
      raise ValueError(
          f"codebook_size={self.codebook_size} is too small for holo_ratio={self.holo_ratio}: "
          "a row has up to holo_ratio chunks and each chunk of a head needs its own "
          "codebook row (need codebook_size >= number of chunks)")
    for d in range(1, self.heads):
      if (KEY_HEAD_STRIDE * d) % self.codebook_size == 0:
        raise ValueError(
            f"codebook_size={self.codebook_size}: heads {d} apart would use identical keys "
            f"(row offset {KEY_HEAD_STRIDE}*{d} = 0 mod codebook_size); choose another size")

  def chunking(self, length: int) -> tuple[int, int]:
    """``(h, n_chunks)`` for a row of ``length`` elements."""
    h = -(-length // self.holo_ratio)
    return h, -(-length // h)

  def row_groups(self, shape) -> int:
    """Groups of axis 0 of a ``shape`` tensor sketched one after another so
    that at most ``fft_chunk_size`` padded elements are transformed at once:
    the smallest divisor of ``shape[0]`` that fits (else ``shape[0]``)."""
    h, n = self.chunking(shape[-1])
    if len(shape) < 2 or math.prod(shape[:-1]) * n * h <= self.fft_chunk_size:
      return 1
    d0, per_index = shape[0], math.prod(shape[1:-1]) * n * h
    fits = [g for g in range(1, d0 + 1) if d0 % g == 0 and d0 // g * per_index
            <= self.fft_chunk_size]
    return fits[0] if fits else d0


def default_compress(p, min_compress_size: int) -> bool:
  """The auto-configuration rule (see module docstring)."""
  shape = tuple(p.shape)
  if len(shape) < 2 or math.prod(shape) < min_compress_size:
    return False
  embedding_like = len(shape) == 2 and shape[0] >= 8 * shape[1]
  return not embedding_like


def compress_labels(params, compress, min_compress_size: int):
  """Per-leaf bools: ``compress`` is None (default rule), a bool, a pytree
  prefix of bools, or a callable ``params -> such a pytree``."""
  if compress is None:
    return jax.tree.map(lambda p: default_compress(p, min_compress_size), params)
  return lay.leaf_labels(params, compress)


# ----------------------------------------------------------------------------
# Codebook keys and the sketch (rows along the last axis).


def phase_keys(head: int, h: int, n_chunks: int, seed: jax.Array,
               layout: HoloLayout) -> jax.Array:
  """Keys ``K_{head, c}`` of every chunk ``c < n_chunks``: complex64 ``[n_chunks, h]``."""
  chunks = jnp.arange(n_chunks, dtype=jnp.uint32)
  rows = (chunks + KEY_HEAD_STRIDE * head) % jnp.uint32(layout.codebook_size)
  cols = jnp.arange(h, dtype=jnp.uint32) % jnp.uint32(layout.codebook_width)
  idx = rows[:, None] * jnp.uint32(layout.codebook_width) + cols[None, :]
  phi = (2.0 * np.pi) * quant.uniform_from_index(seed, idx)
  return jax.lax.complex(jnp.cos(phi), jnp.sin(phi))


def _by_row_groups(fn, x: jax.Array, groups: int) -> jax.Array:
  """``fn(x)`` computed on ``groups`` strided slices of axis 0, one after another."""
  if groups == 1:
    return fn(x)
  d0 = x.shape[0]
  xs = jnp.moveaxis(x.reshape(d0 // groups, groups, *x.shape[1:]), 1, 0)
  ys = jax.lax.map(fn, xs)
  return jnp.moveaxis(ys, 0, 1).reshape(d0, *ys.shape[2:])


def sketch(x: jax.Array, seed: jax.Array, layout: HoloLayout) -> jax.Array:
  """``trace_e = sum_c FFT(x_c) K_{e,c}`` per row of ``x [*lead, L]``:
  complex64 ``[*lead, heads, h]``. Rows are transformed in
  :meth:`HoloLayout.row_groups` groups (at most ``fft_chunk_size`` at once)."""
  h, n = layout.chunking(x.shape[-1])
  groups = layout.row_groups(x.shape)
  lead = (1,) * (x.ndim - 1)
  keys = [phase_keys(e, h, n, seed, layout).reshape(*lead, n, h) for e in range(layout.heads)]

  def one(xg):
    f = jnp.fft.fft(lay.row_blocks(xg, h), axis=-1)              # [*lead, n, h]
    return jnp.stack([jnp.sum(f * k, axis=-2) for k in keys], axis=-2)

  return _by_row_groups(one, x, groups)


def retrieve(hm: jax.Array, length: int, seed: jax.Array, layout: HoloLayout) -> jax.Array:
  """``x^_c = mean_e Re IFFT(hm_e conj K_{e,c}) = Re IFFT(mean_e hm_e conj K_{e,c})``:
  float32 ``[*lead, length]``. The inverse transform is linear, so the heads
  are unbound in the frequency domain and summed before one transform (one
  instead of ``heads``); and it runs as a forward one,

    Re IFFT(s) = Re conj(FFT(conj s)) / h = Re FFT(sum_e conj(hm_e) K_{e,c}) / h,

  so the 1/(h heads) scale fuses into taking the real part (an inverse FFT's
  own 1/h scaling can run as a separate kernel per transform on the GPU)."""
  heads, h = hm.shape[-2:]
  _, n = layout.chunking(length)
  groups = layout.row_groups(hm.shape[:-2] + (length,))
  lead = (1,) * (hm.ndim - 2)
  keys = [phase_keys(e, h, n, seed, layout).reshape(*lead, n, h) for e in range(heads)]

  def one(hg):
    spec = sum(jnp.conj(hg[..., e:e + 1, :]) * keys[e] for e in range(heads))  # [*lead, n, h]
    x = jnp.real(jnp.fft.fft(spec, axis=-1)) * (1.0 / (h * heads))
    return lay.from_row_blocks(x, length)

  return _by_row_groups(one, hm, groups)


def resonance_gate(g: jax.Array, m_hat: jax.Array, faithful: bool, axes=None) -> jax.Array:
  """``gamma`` in ``[0, 1]`` (see module docstring); ``rms`` is taken over ``axes``
  (None: the whole tensor; ``(1, 2)`` for ``[k, rows, L]``: per stacked tensor)."""
  if faithful:
    return 0.5 + 0.5 * jnp.tanh(5.0 * g * m_hat)
  rms = lambda x: jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True))
  a = g * m_hat / (rms(g) * rms(m_hat) + 1e-30)
  return 0.5 + 0.5 * jnp.tanh(a)


def per_element(rms: jax.Array, block: int, length: int) -> jax.Array:
  """Block values ``[*lead, nb]`` repeated over their elements: ``[*lead, length]``."""
  full = jnp.broadcast_to(rms[..., None], (*rms.shape, block))
  return lay.from_row_blocks(full, length)


# ----------------------------------------------------------------------------
# The transformation.


def _init_leaf(p, compressed: bool, layout: HoloLayout):
  z = jnp.zeros_like(p, dtype=jnp.float32)
  if not compressed or p.ndim == 0 or p.size == 0:
    return z, jnp.zeros_like(z)  # two buffers: a donated step may not get one twice
  h, _ = layout.chunking(p.shape[-1])  # n_chunks <= holo_ratio <= codebook_size
  z = lay.reshard(z, lay.work_spec(z, None))
  hm = jnp.zeros_like(jnp.broadcast_to(z[..., None, :1], (*z.shape[:-1], layout.heads, h)),
                      dtype=jnp.complex64)
  return hm, moments.block_rms(z, layout.v_block_size)


def _sketched_update(g32, mu, nu, count, *, layout, b1, b2, eps, rf, sketch_, retrieve_,
                     axes=None):
  """The compressed update of ``g32 float32[*lead, L]`` given ``sketch_: [*lead, L] ->
  [*lead, heads, h]`` and ``retrieve_`` (its adjoint): ``(u, hm, rms)``. The gate's
  ``rms`` is over ``axes`` (None: all of ``g32``; see :func:`resonance_gate`)."""
  length, vb = g32.shape[-1], layout.v_block_size
  _, n_chunks = layout.chunking(length)
  bc1 = 1.0 - jnp.asarray(b1, jnp.float32) ** count
  bc2 = 1.0 - jnp.asarray(b2, jnp.float32) ** count

  rms = moments.rms_moment(moments.block_rms(g32, vb), nu, b2)
  if layout.faithful:
    x = g32
    s_el = per_element(rms, vb, length)
  else:
    s_el = per_element(rms / jnp.sqrt(bc2), vb, length)
    x = jnp.where(s_el > 0, g32 / jnp.where(s_el > 0, s_el, 1.0), 0.0)
  trace = sketch_(x)
  if layout.faithful:
    trace = trace * np.float32(1.0 / math.sqrt(n_chunks))
  hm = b1 * mu + (1.0 - b1) * trace

  if layout.exact_grad and not layout.faithful:
    m_hat = b1 * retrieve_(mu) + (1.0 - b1) * x
  else:
    m_hat = retrieve_(hm)
  gamma = resonance_gate(x, m_hat, layout.faithful, axes)
  m_g = m_hat * (1.0 - rf + rf * gamma)
  if layout.faithful:
    u = jnp.sqrt(bc2) / bc1 * jnp.clip(m_g, -2.0, 2.0) / (s_el + eps)
  else:
    u = m_g / (bc1 * (1.0 + eps / s_el))  # = (m_g / bc1) s / (s + eps); a divide last: XLA
    # does not copy it into every leaf's output slice (flat layout)
  return u, hm.astype(jnp.complex64), rms


def _leaf_update(g, mu, nu, seed, count, *, layout, b1, b2, eps, rf):
  """One tensor: ``(update float32, new mu, new nu)``."""
  if not jnp.iscomplexobj(mu):  # dense: exact Adam
    return moments.dense_adam(g, mu, nu, b1=b1, b2=b2, eps=eps, count=count)

  spec = lay.work_spec(g, None)
  g32 = lay.reshard(g.astype(jnp.float32), spec)
  length, lead = g.shape[-1], g.ndim - 1
  sketch_ = lambda x: lay.per_shard(lambda a, sd: sketch(a, sd, layout), x, seed,
                                    lead=lead, out_trailing=2)
  retrieve_ = lambda hm: lay.per_shard(lambda a, sd: retrieve(a, length, sd, layout), hm, seed,
                                       lead=lead, out_trailing=1)
  u, hm, rms = _sketched_update(g32, mu, nu, count, layout=layout, b1=b1, b2=b2, eps=eps, rf=rf,
                                sketch_=sketch_, retrieve_=retrieve_)
  if spec is not None:
    u = lay.reshard(u, jax.sharding.PartitionSpec(*lay.explicit_spec(g)))
  return u, hm, rms


# ----------------------------------------------------------------------------
# The flat layout: one stacked state per group of equally shaped tensors.


class FlatPlan(NamedTuple):
  """Which leaves share a stacked state (``tree_layout="flat"``), from static shapes
  and shardings.

  ``dense``: indices of the unsharded dense leaves (one float32 vector of all
  their elements); ``groups``: ``((lead, L, spec), indices)`` per group of
  compressed leaves (in order of first appearance) that share the compute
  ``spec`` (:func:`holojax.optim.layout.work_spec`, ``None``: no explicit
  sharding) and, unsharded, the shape flattened to ``[rows, L]`` (``lead =
  (rows,)``), sharded, the shape ``(*lead, L)`` itself; ``dense_groups``:
  ``(shape, spec, indices)`` per group of explicitly sharded dense leaves.
  """
  dense: tuple[int, ...]
  groups: tuple[tuple[tuple, tuple[int, ...]], ...]
  dense_groups: tuple[tuple[tuple, tuple, tuple[int, ...]], ...] = ()


def _full_spec(x, spec) -> tuple | None:
  """``spec`` (a ``PartitionSpec`` or None: ``x``'s own) as one entry per axis of
  ``x``; None when no entry names a mesh axis."""
  entries = lay.explicit_spec(x) if spec is None else tuple(spec) + (None,) * (x.ndim - len(spec))
  if entries is None or not any(lay.entry_axes(e) for e in entries):
    return None
  return entries


def flat_plan(leaves, labels) -> FlatPlan:
  """The :class:`FlatPlan` of ``leaves`` and their compress ``labels``; scalars and
  empty tensors are dense, as in the leaf layout. Leaves group only with leaves
  of the same shape *and* compute spec, so a stacked ``[k, *lead, L]`` array is
  sharded like each of its members (``None`` on the new axis): stacking and
  splitting stay local to each device."""
  dense, groups, dense_groups = [], {}, {}
  for i, (x, c) in enumerate(zip(leaves, labels)):
    if not c or x.ndim == 0 or x.size == 0:
      spec = _full_spec(x, None)
      if spec is None:
        dense.append(i)
      else:
        dense_groups.setdefault((tuple(x.shape), spec), []).append(i)
      continue
    spec = _full_spec(x, lay.work_spec(x, None))
    lead = (math.prod(x.shape[:-1]),) if spec is None else tuple(x.shape[:-1])
    groups.setdefault((lead, x.shape[-1], spec), []).append(i)
  return FlatPlan(tuple(dense), tuple((k, tuple(v)) for k, v in groups.items()),
                  tuple((*k, tuple(v)) for k, v in dense_groups.items()))


def _group_lead(lead, k: int, spec) -> tuple[int, ...]:
  """Leading shape of a group's stacked state: ``(k rows,)`` unsharded (as the
  tensors' rows stacked), ``(k, *lead)`` sharded (the new axis unsharded)."""
  return (k * lead[0], *lead[1:]) if spec is None else (k, *lead)


def _flat_state_specs(plan: FlatPlan, layout: HoloLayout):
  """``(mu, nu)`` lists of ``(shape, spec)``: ``[dense vector, *groups, *dense groups]``
  (``spec`` None: unsharded)."""
  mus, nus = [], []
  for (lead, length, spec), idx in plan.groups:
    h, _ = layout.chunking(length)
    st = _group_lead(lead, len(idx), spec)
    sp = None if spec is None else (None, *spec[:-1])
    mus.append(((*st, layout.heads, h), None if sp is None else (*sp, None, None)))
    nus.append(((*st, lay.num_blocks(length, layout.v_block_size)),
                None if sp is None else (*sp, None)))
  for shape, spec, idx in plan.dense_groups:
    mus.append(((len(idx), *shape), (None, *spec)))
    nus.append(((len(idx), *shape), (None, *spec)))
  return mus, nus


def _flat_state_shapes(plan: FlatPlan, leaves, layout: HoloLayout):
  """``(mu shapes, nu shapes)``: ``[dense vector, *groups, *dense groups]`` (see
  :func:`_init_flat`)."""
  d = sum(leaves[i].size for i in plan.dense)
  mus, nus = _flat_state_specs(plan, layout)
  return [(d,)] + [s for s, _ in mus], [(d,)] + [s for s, _ in nus]


def _check_flat_state(state, plan: FlatPlan, paths, leaves, layout: HoloLayout) -> None:
  """Raises a ``ValueError`` naming the leaves of the first group (or the dense
  vector) whose state does not have the shape these gradients need."""
  mus, nus = _flat_state_shapes(plan, leaves, layout)
  got_mu = [tuple(x.shape) for x in jax.tree.leaves(state.mu)]
  got_nu = [tuple(x.shape) for x in jax.tree.leaves(state.nu)]
  if (got_mu, got_nu) == (mus, nus):
    return
  groups = ([plan.dense] + [idx for _, idx in plan.groups]
            + [idx for _, _, idx in plan.dense_groups])
  bad = next((i for i in range(len(groups)) if i >= len(got_mu) or got_mu[i] != mus[i]
              or got_nu[i] != nus[i]), len(groups) - 1)
  names = ", ".join(f"{jax.tree_util.keystr(paths[i])} {tuple(leaves[i].shape)}"
                    for i in groups[bad])
  raise ValueError(
      f"holo_adam (tree_layout='flat'): the gradients of {names} do not match the optimizer "
      f"state built at init (state mu shapes {got_mu}, these gradients need {mus})")


def _zeros(shape, dtype, spec, like):
  """``zeros(shape, dtype)``, explicitly sharded as ``spec`` on ``like``'s mesh
  (``spec`` None: unsharded)."""
  z = jnp.zeros(shape, dtype)
  if spec is None:
    return z
  return jax.sharding.reshard(z, NamedSharding(jax.typeof(like).sharding.mesh, P(*spec)))


def _init_flat(leaves, labels, layout: HoloLayout):
  """``(mu, nu)`` tuples: float32 ``[D]`` twice (dense m and sqrt(v) of all
  unsharded dense leaves' ``D`` elements), then per group complex64 ``[k rows,
  heads, h]`` and float32 ``[k rows, ceil(L / v_block_size)]`` (the ``k``
  tensors' rows stacked; explicitly sharded: ``[k, *lead, ...]`` sharded like
  the tensors' compute spec, the new axis unsharded), then per group of
  explicitly sharded dense leaves float32 ``[k, *shape]`` twice."""
  plan = flat_plan(leaves, labels)
  d = sum(leaves[i].size for i in plan.dense)
  mus, nus = _flat_state_specs(plan, layout)
  first = [idx[0] for _, idx in plan.groups] + [idx[0] for *_, idx in plan.dense_groups]
  n_comp = len(plan.groups)
  mu = [jnp.zeros((d,), jnp.float32)] + [
      _zeros(s, jnp.complex64 if j < n_comp else jnp.float32, sp, leaves[i])
      for j, ((s, sp), i) in enumerate(zip(mus, first))]
  nu = [jnp.zeros((d,), jnp.float32)] + [
      _zeros(s, jnp.float32, sp, leaves[i]) for (s, sp), i in zip(nus, first)]
  return tuple(mu), tuple(nu)


def _group_update(g_krl, hm, rms, seed, count, **kw):
  """One group of the flat layout: ``g_krl float32[k, *lead, L]``, its stacked state
  ``hm [k rows, heads, h]``, ``rms [k rows, nb]`` (or ``[k, *lead, ...]``):
  ``(u [k, *lead, L], hm, rms)``, the gate's rms per tensor. Unsharded, the
  sketch runs once over all ``k rows`` rows (keys depend on chunk and head
  only); explicitly sharded, over ``[k, *lead, L]`` as it is sharded (rows
  never mix, so each device sketches its own rows)."""
  layout = kw["layout"]
  k, *lead, length = g_krl.shape
  heads, h = hm.shape[-2:]
  rows = math.prod(lead)
  if lay.explicit_spec(g_krl) is None:
    sketch_ = lambda x: sketch(x.reshape(k * rows, length), seed, layout).reshape(
        k, *lead, heads, h)
    retrieve_ = lambda x: retrieve(x.reshape(k * rows, heads, h), length, seed,
                                   layout).reshape(k, *lead, length)
  else:
    nd = g_krl.ndim - 1
    sketch_ = lambda x: lay.per_shard(lambda a, sd: sketch(a, sd, layout), x, seed,
                                      lead=nd, out_trailing=2)
    retrieve_ = lambda x: lay.per_shard(lambda a, sd: retrieve(a, length, sd, layout), x, seed,
                                        lead=nd, out_trailing=1)
  u, hm_new, rms_new = _sketched_update(
      g_krl, hm.reshape(k, *lead, heads, h), rms.reshape(k, *lead, -1), count, sketch_=sketch_,
      retrieve_=retrieve_, axes=tuple(range(1, g_krl.ndim)), **kw)
  return u, hm_new.reshape(hm.shape), rms_new.reshape(rms.shape)


def _flat_update(leaves, mu, nu, seed, count, *, plan: FlatPlan, layout, b1, b2, eps, rf):
  """Every leaf's float32 update and the new ``(mu, nu)`` tuples: one dense Adam
  on the concatenated unsharded dense leaves (and one per group of sharded
  ones, stacked), one sketched update per group on its stacked ``[k, *lead, L]``
  gradients (resharded to the compute spec first; the gate's rms per tensor)."""
  out = [None] * len(leaves)
  new_mu, new_nu = [mu[0]], [nu[0]]
  if plan.dense:
    us, new_mu[0], new_nu[0] = moments.dense_adam_concat(
        [leaves[i] for i in plan.dense], mu[0], nu[0], b1=b1, b2=b2, eps=eps, count=count)
    for i, u in zip(plan.dense, us):
      out[i] = u
  n_comp = len(plan.groups)
  for ((lead, length, spec), idx), m, v in zip(plan.groups, mu[1:], nu[1:]):
    work = None if spec is None else P(*spec)
    g_krl = jnp.stack([lay.reshard(leaves[i].astype(jnp.float32), work).reshape(*lead, length)
                       for i in idx])
    u_krl, hm, rms = _group_update(g_krl, m, v, seed, count, layout=layout, b1=b1, b2=b2,
                                   eps=eps, rf=rf)
    new_mu.append(hm)
    new_nu.append(rms)
    for j, i in enumerate(idx):
      u = jax.lax.index_in_dim(u_krl, j, keepdims=False).reshape(leaves[i].shape)
      own = lay.explicit_spec(leaves[i])
      out[i] = u if spec is None or own == spec else lay.reshard(u, P(*own))
  for (shape, spec, idx), m, v in zip(plan.dense_groups, mu[1 + n_comp:], nu[1 + n_comp:]):
    g = jnp.stack([leaves[i].astype(jnp.float32) for i in idx])
    u_k, m, v = moments.dense_adam(g, m, v, b1=b1, b2=b2, eps=eps, count=count)
    new_mu.append(m)
    new_nu.append(v)
    for j, i in enumerate(idx):
      out[i] = jax.lax.index_in_dim(u_k, j, keepdims=False)
  return out, tuple(new_mu), tuple(new_nu)


def _state_shapes_ok(g, mu, nu, layout) -> bool:
  shape = tuple(g.shape)
  if not jnp.iscomplexobj(mu):
    return tuple(mu.shape) == shape
  h, _ = layout.chunking(shape[-1])
  return (tuple(mu.shape) == shape[:-1] + (layout.heads, h)
          and tuple(nu.shape) == shape[:-1] + (lay.num_blocks(shape[-1], layout.v_block_size),))


def scale_by_holo_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                       holo_ratio: int = 20, v_block_size: int = 32, heads: int = 4,
                       resonance_factor: float = 0.4, warmup_steps: int = 1000,
                       min_compress_size: int = 8192, codebook_size: int = 256,
                       codebook_width: int = 8192, fft_chunk_size: int = 2_000_000,
                       faithful: bool = False, compress: Any = None, seed: int = 0,
                       exact_grad: bool = True, tree_layout: str = "leaf"
                       ) -> optax.GradientTransformationExtraArgs:
  """Rescales updates by HoloAdam's sketched m and block-rms v (see module docstring).

  Args:
    b1, b2, eps: Adam's decay rates (in ``[0, 1)``) and denominator epsilon.
    holo_ratio: chunks per row ~ compression of m (chunk length ``L / ratio``).
    v_block_size: elements per block of the block-mean v.
    heads: independent key sets averaged at retrieval.
    resonance_factor: gate strength in ``[0, 1]``, annealed in over ``warmup_steps``.
    min_compress_size: tensors with fewer elements stay dense (exact Adam).
    codebook_size, codebook_width: rows and width of the phase-key codebook.
    fft_chunk_size: at most this many (padded) elements are transformed at
      once (groups of rows along axis 0).
    faithful: the original gain ``1/sqrt(n)``, gate and clipping, no
      preconditioning.
    compress: None (auto rule), bool, pytree prefix of bools, or callable
      ``params -> pytree of bools``: which tensors are sketched.
    seed: codebook seed, a runtime value (it initialises the state's ``key``;
      the codebook is recomputed from it, never stored).
    exact_grad: use ``b1 p^_{t-1} + (1 - b1) p_t`` (sketched history, exact
      current gradient) instead of ``p^_t`` (ignored when ``faithful``).
    tree_layout: ``"leaf"`` (a state per parameter, sharded like it) or
      ``"flat"`` (a stacked state per group of equally shaped compressed
      tensors and one dense vector: one sketch per group, a program whose
      size does not grow with the number of tensors; explicitly sharded
      tensors stack only with tensors of their shape and compute spec). See
      the module docstring.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Shape-setting arguments
    (:data:`STATIC_ARGS`, exported as ``holojax.optim.HOLO_ADAM_STATIC_ARGS``)
    must be ``static_args`` under ``optax.inject_hyperparams``.

  Raises:
    ValueError: an argument is out of range, or (at ``update``) a gradient's
      shape does not match its parameter (the message names the leaf).
    TypeError: an argument has the wrong type, or (at ``init``) a parameter
      is not floating point.
  """
  layout = HoloLayout(holo_ratio, v_block_size, heads, min_compress_size, codebook_size,
                      codebook_width, fft_chunk_size, faithful, exact_grad, tree_layout)
  validate.check_real("b1", b1, 0.0, 1.0, hi_open=True)
  validate.check_real("b2", b2, 0.0, 1.0, hi_open=True)
  validate.check_real("eps", eps, 0.0)
  validate.check_real("resonance_factor", resonance_factor, 0.0, 1.0)
  validate.check_real("warmup_steps", warmup_steps, 0.0)
  validate.check_seed("seed", seed)

  def init_fn(params):
    validate.check_float_params("holo_adam", params)
    labels = compress_labels(params, compress, min_compress_size)
    treedef = jax.tree.structure(params)
    flat_labels = treedef.flatten_up_to(labels)
    if layout.tree_layout == "flat":
      mu, nu = _init_flat(jax.tree.leaves(params), flat_labels, layout)
    else:
      leaves = [_init_leaf(p, c, layout) for p, c in zip(jax.tree.leaves(params), flat_labels)]
      mu = treedef.unflatten([x[0] for x in leaves])
      nu = treedef.unflatten([x[1] for x in leaves])
    return ScaleByHoloAdamState(
        count=jnp.zeros((), jnp.int32),
        key=jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32), mu=mu, nu=nu)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is not None:
      validate.check_param_shapes("holo_adam", updates, params)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    w = jnp.asarray(warmup_steps, jnp.float32)
    rf = resonance_factor * jnp.where(w > 0, jnp.minimum(t / jnp.maximum(w, 1e-30), 1.0), 1.0)
    seed32 = quant.seed_from_key(jax.random.wrap_key_data(state.key))
    kw = dict(layout=layout, b1=b1, b2=b2, eps=eps, rf=rf)

    if layout.tree_layout == "flat":
      gs = [g for _, g in paths_leaves]
      plan = flat_plan(gs, treedef.flatten_up_to(
          compress_labels(updates, compress, min_compress_size)))
      _check_flat_state(state, plan, [path for path, _ in paths_leaves], gs, layout)
      us, mu, nu = _flat_update(gs, state.mu, state.nu, seed32, count, plan=plan, **kw)
      us = [u.astype(g.dtype) for u, g in zip(us, gs)]
    else:
      out = []
      for (path, g), m, v in zip(paths_leaves, treedef.flatten_up_to(state.mu),
                                 treedef.flatten_up_to(state.nu)):
        if not _state_shapes_ok(g, m, v, layout):
          validate.raise_state_mismatch("holo_adam", path, g.shape)
        u, m, v = _leaf_update(g, m, v, seed32, count, **kw)
        out.append((u.astype(g.dtype), m, v))
      us = [x[0] for x in out]
      mu = treedef.unflatten([x[1] for x in out])
      nu = treedef.unflatten([x[2] for x in out])

    new_state = ScaleByHoloAdamState(count=count, key=state.key, mu=mu, nu=nu)
    return treedef.unflatten(us), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def holo_adam(learning_rate: optax.ScalarOrSchedule = 1e-4, b1: float = 0.9,
              b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.01,
              holo_ratio: int = 20, v_block_size: int = 32, heads: int = 4,
              resonance_factor: float = 0.4, warmup_steps: int = 1000,
              min_compress_size: int = 8192, codebook_size: int = 256,
              codebook_width: int = 8192, fft_chunk_size: int = 2_000_000,
              faithful: bool = False, compress: Any = None, seed: int = 0,
              exact_grad: bool = True, mask: Any = None, tree_layout: str = "leaf"
              ) -> optax.GradientTransformationExtraArgs:
  """HoloAdam(W): ``apply_if_finite(chain(scale_by_holo_adam, add_decayed_weights, -lr))``.

  A non-finite gradient skips the whole step (no decay, no schedule step,
  no state change); the returned state's ``total_notfinite`` counts the
  skips. See :func:`scale_by_holo_adam` for the arguments and the module
  docstring for the maths; ``mask`` is ``optax.add_decayed_weights``'.
  Presets: ``holo_adam(1e-4, **HOLO_ADAM_PRESETS["max"])``.

  Example::

    >>> import jax.numpy as jnp, optax
    >>> opt = optax.chain(optax.clip_by_global_norm(1.0), holo_adam(1e-3))
    >>> state = opt.init({"w": jnp.zeros((256, 256))})
    >>> state[1].inner_state[0].mu["w"].shape  # (rows, heads, h = 256 / 20 rounded up)
    (256, 4, 13)
  """
  validate.check_scalar_or_schedule("learning_rate", learning_rate)
  validate.check_real("weight_decay", weight_decay, 0.0)
  return moments.skip_non_finite(optax.chain(
      scale_by_holo_adam(b1=b1, b2=b2, eps=eps, holo_ratio=holo_ratio,
                         v_block_size=v_block_size, heads=heads,
                         resonance_factor=resonance_factor, warmup_steps=warmup_steps,
                         min_compress_size=min_compress_size, codebook_size=codebook_size,
                         codebook_width=codebook_width, fft_chunk_size=fft_chunk_size,
                         faithful=faithful, compress=compress, seed=seed,
                         exact_grad=exact_grad, tree_layout=tree_layout),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate)))
