"""HoloAdam: Adam whose first moment is a holographic (FFT, phase-key) sketch.

A compressed parameter of ``N`` elements is flattened, zero-padded and cut
into ``n = ceil(N / h)`` chunks ``g_c`` of length ``h = even(max(64,
N // holo_ratio))``. Head ``e`` binds chunk ``c`` to a unit-phasor key
``K_{e,c}`` (a row of a fixed codebook) in the Fourier domain and
superposes all chunks into one complex trace of length ``h``::

  trace_e = sum_c FFT(g_c) (x) K_{e,c}                     complex[h]
  hm_e   <- b1 hm_e + (1 - b1) trace_e                     (linear EMA)
  m^_c    = (1/heads) sum_e Re IFFT(hm_e (x) conj K_{e,c})  unit gain

Since ``|K| = 1`` the own chunk comes back exactly (``K conj K = 1``); every
other chunk adds crosstalk: ``Re IFFT`` of a random-phase spectrum keeps
half of its power, so per head noise/signal power is ``(n - 1) / 2`` and
heads with independent keys average it down::

  cos(m^, m) ~ 1 / sqrt(1 + (n - 1) / (2 heads))

The crosstalk is fixed by the keys, so it does *not* average out over steps
(``m^`` is exactly the linear sketch of the exact EMA ``m``).

Rank: retrieval is the adjoint of the sketch (``m^ = S^T S m / h``, positive
semi-definite), and the sketch keeps ``2 heads h ~ 2 heads N / holo_ratio``
real numbers, so ``m^`` lies in a *fixed* subspace of dimension at most
``2 heads / holo_ratio`` of the parameter space (0.4 for the balanced
preset, 0.08 for "max"). Updates built from ``m^`` alone never move the
other directions: on a quadratic the original stalls with about that
fraction of the loss left. The default therefore sketches only the history
and uses the current gradient exactly (``exact_grad=True``)::

  m_used = b1 m^_{t-1} + (1 - b1) g_t        (= m^_t + (1 - b1) (g_t - S^T S g_t / h))

which is ``m^_t`` plus the part of ``g_t`` the sketch misses; every direction
then moves at least like Adam without momentum, scaled by ``1 - b1``.

Codebook: ``K[r, j] = exp(2 pi i u(seed, r * codebook_width + j))`` for
``r < codebook_size``, ``j < codebook_width``, ``u`` a counter-based uniform
(:func:`holojax.kernels.quant.uniform_from_index`). It is *computed inside the
update* for the rows in use, never stored; head ``e``, chunk ``c`` uses row
``(c + 13 e) mod codebook_size``, entries ``j mod codebook_width`` (tiled
when ``h > codebook_width``). "Too small" a codebook means two chunks of one
head share a key (``n > codebook_size``: their momenta become inseparable)
or two heads use the same key for every chunk (``13 d = 0 mod
codebook_size`` for a head distance ``0 < d < heads``: those heads are
copies and average nothing); both raise ``ValueError``.

Second moment: block means of ``g^2`` over ``v_block_size`` elements
(a partial last block is averaged over its real elements)::

  sv <- b2 sv + (1 - b2) blockmean(g^2)                    float32[ceil(N / vb)]

Resonance gate (default, scale-invariant; ``rms`` over the tensor)::

  a     = g (x) m / (rms(g) rms(m) + 1e-30)        (mean of a is cos(g, m))
  gamma = 0.5 + 0.5 tanh(a)
  rf    = resonance_factor * min(t / warmup_steps, 1)
  m_g   = m_used (x) (1 - rf + rf gamma)     (gate computed with m_used)
  u     = (m_g / (1 - b1^t)) / (sqrt(repeat(sv) / (1 - b2^t)) + eps)

``faithful=True`` reproduces the original formulas: ``m_used = m^_t``, a
gain ``1/sqrt(n)`` on the trace (never undone), ``gamma = 0.5 + 0.5 tanh(5 g (x) m^)`` (not
scale-invariant: for small gradients ``gamma ~ 0.5``) and
``u = sqrt(1 - b2^t) / (1 - b1^t) * clip(m_g, -2, 2) / (sqrt(repeat(sv)) + eps)``.

Auto-configuration (default rule, overridable with ``compress``): a
parameter is compressed iff ``ndim >= 2``, ``N >= min_compress_size`` and it
is not embedding-like (2-D with ``shape[0] >= 8 * shape[1]``: a vocabulary
table, whose gradient is row-sparse, so chunk crosstalk would smear the
rows of the few tokens in a batch over all others). Dense parameters get
exact Adam (float32 ``m`` and ``v`` of the parameter's shape). The shape rule
has false positives: tall projections such as GQA k/v ``(8192, 1024)`` of a
70B Llama also stay dense (costs memory, not accuracy); an untied output
head ``(d, vocab)`` is sketched. Pass ``compress`` to decide per tensor.

Safeguards: gradients of any float dtype (bf16/fp16 included) are promoted
to float32; updates come back in the gradient's dtype. A non-finite gradient
anywhere gives a zero update and leaves the state unchanged except
``skipped``.

State layout, bytes: ``count``, ``skipped`` int32 (8 in all); per compressed
parameter ``8 heads h`` (complex64 ``hm``) ``+ 4 ceil(N / vb)`` (``sv``), i.e.
about ``64 heads / holo_ratio + 32 / vb`` bits/param; per dense parameter
``8 N`` (64 bits/param).

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

from holojax.kernels import quant

# Arguments that set shapes or the code path: static under
# ``optax.inject_hyperparams(holo_adam, static_args=STATIC_ARGS)``. (``compress``
# may be a callable, which inject_hyperparams would otherwise call as a schedule.)
STATIC_ARGS = ("holo_ratio", "v_block_size", "heads", "min_compress_size", "codebook_size",
               "codebook_width", "fft_chunk_size", "faithful", "compress", "seed", "exact_grad")

HOLO_ADAM_PRESETS: dict[str, dict[str, int]] = {
    "max": dict(holo_ratio=50, heads=2),
    "balanced": dict(holo_ratio=20, heads=4),
    "conservative": dict(holo_ratio=10, heads=8),
}

KEY_HEAD_STRIDE = 13  # codebook row offset between heads (as the original)
MIN_CHUNK = 64        # shortest chunk (as the original)


class ScaleByHoloAdamState(NamedTuple):
  """State of :func:`scale_by_holo_adam`."""
  count: jax.Array    # int32[], finite steps taken
  skipped: jax.Array  # int32[], steps skipped for non-finite gradients
  mu: Any             # per leaf: complex64[heads, h] trace, or float32[param shape] (dense)
  nu: Any             # per leaf: float32[ceil(N / v_block_size)], or float32[param shape]


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
  seed: int = 0
  exact_grad: bool = True

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if isinstance(v, jax.Array):
        raise TypeError(f"{f.name} sets array shapes and must be a Python value; under "
                        "optax.inject_hyperparams pass static_args=STATIC_ARGS")
    _check_int("holo_ratio", self.holo_ratio, 1)
    _check_int("v_block_size", self.v_block_size, 1)
    _check_int("heads", self.heads, 1)
    _check_int("min_compress_size", self.min_compress_size, 0)
    _check_int("codebook_size", self.codebook_size, 1)
    _check_int("codebook_width", self.codebook_width, 1)
    _check_int("fft_chunk_size", self.fft_chunk_size, 1)
    _check_int("seed", self.seed, 0)
    for name in ("faithful", "exact_grad"):
      if not isinstance(getattr(self, name), (bool, np.bool_)):
        raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
    # Every tensor of more than 64 * holo_ratio elements has about holo_ratio
    # chunks; the exact count per tensor is checked again at init.
    if self.codebook_size < self.holo_ratio:
      raise ValueError(
          f"codebook_size={self.codebook_size} is too small for holo_ratio={self.holo_ratio}: "
          "a large tensor has about holo_ratio chunks and each chunk of a head needs its own "
          "codebook row (need codebook_size >= number of chunks)")
    for d in range(1, self.heads):
      if (KEY_HEAD_STRIDE * d) % self.codebook_size == 0:
        raise ValueError(
            f"codebook_size={self.codebook_size}: heads {d} apart would use identical keys "
            f"(row offset {KEY_HEAD_STRIDE}*{d} = 0 mod codebook_size); choose another size")

  def chunking(self, n: int) -> tuple[int, int]:
    """``(h, n_chunks)`` for a tensor of ``n`` elements."""
    h = max(MIN_CHUNK, n // self.holo_ratio)
    h += h % 2
    return h, -(-n // h)

  def groups(self, h: int, n_chunks: int) -> tuple[int, int]:
    """``(chunks per FFT group, groups)``: at most ``fft_chunk_size`` elements a group."""
    per = max(1, min(n_chunks, self.fft_chunk_size // h))
    return per, -(-n_chunks // per)


def _check_int(name: str, value, lo: int):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
    raise ValueError(f"{name}={value!r} must be an integer >= {lo}")


def _check_real(name: str, value, lo: float, hi: float, hi_open=False):
  """Validates Python numbers only (traced hyperparameters pass unchecked)."""
  if isinstance(value, jax.Array) or not isinstance(value, (int, float, np.number)):
    return
  if not math.isfinite(value) or value < lo or value > hi or (hi_open and value == hi):
    raise ValueError(f"{name}={value!r} must be in [{lo}, {hi}{')' if hi_open else ']'}")


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
  labels = compress(params) if callable(compress) else compress
  return jax.tree.map(lambda c, sub: jax.tree.map(lambda _: bool(c), sub), labels, params)


# ----------------------------------------------------------------------------
# Codebook keys and the sketch.


def phase_keys(head: int, chunks: jax.Array, h: int, layout: HoloLayout) -> jax.Array:
  """Keys ``K_{head, c}`` for chunk indices ``chunks [k]``: complex64 ``[k, h]``."""
  rows = (chunks + KEY_HEAD_STRIDE * head) % layout.codebook_size
  cols = jnp.arange(h, dtype=jnp.uint32) % jnp.uint32(layout.codebook_width)
  idx = rows.astype(jnp.uint32)[:, None] * jnp.uint32(layout.codebook_width) + cols[None, :]
  phi = (2.0 * np.pi) * quant.uniform_from_index(jnp.uint32(layout.seed), idx)
  return jax.lax.complex(jnp.cos(phi), jnp.sin(phi))


def _grouped(x: jax.Array, h: int, n_chunks: int, layout: HoloLayout):
  """Flat ``x [N]`` -> ``[groups, per, h]`` (zero padded) and chunk ids of the same shape[:2]."""
  per, groups = layout.groups(h, n_chunks)
  x = jnp.pad(x, (0, groups * per * h - x.size))
  ids = jnp.arange(groups * per, dtype=jnp.int32).reshape(groups, per)
  return x.reshape(groups, per, h), ids


def sketch(g: jax.Array, h: int, n_chunks: int, layout: HoloLayout) -> jax.Array:
  """``trace_e = sum_c FFT(g_c) K_{e,c}`` for flat float32 ``g``: complex64 ``[heads, h]``."""
  xs, ids = _grouped(g, h, n_chunks, layout)

  def one_group(carry, inp):
    x, c = inp
    f = jnp.fft.fft(x, axis=-1)
    tr = jnp.stack([jnp.sum(f * phase_keys(e, c, h, layout), axis=0)
                    for e in range(layout.heads)])
    return carry + tr, None

  zero = jnp.zeros((layout.heads, h), jnp.complex64)
  if xs.shape[0] == 1:
    return one_group(zero, (xs[0], ids[0]))[0]
  return jax.lax.scan(one_group, zero, (xs, ids))[0]


def retrieve(hm: jax.Array, size: int, n_chunks: int, layout: HoloLayout) -> jax.Array:
  """``m^_c = mean_e Re IFFT(hm_e conj K_{e,c})``, flat float32 ``[size]``."""
  heads, h = hm.shape
  per, groups = layout.groups(h, n_chunks)
  ids = jnp.arange(groups * per, dtype=jnp.int32).reshape(groups, per)

  def one_group(c):
    acc = jnp.zeros((per, h), jnp.float32)
    for e in range(heads):
      spec = hm[e][None, :] * jnp.conj(phase_keys(e, c, h, layout))
      acc = acc + jnp.real(jnp.fft.ifft(spec, axis=-1))
    return acc / heads

  out = one_group(ids[0])[None] if groups == 1 else jax.lax.map(one_group, ids)
  return out.reshape(-1)[:size]


def block_mean_sq(g: jax.Array, block: int) -> jax.Array:
  """Mean of ``g^2`` over consecutive blocks of flat ``g`` (partial last block: its own size)."""
  n = g.size
  nb = -(-n // block)
  sums = jnp.sum(jnp.pad(jnp.square(g), (0, nb * block - n)).reshape(nb, block), axis=-1)
  counts = np.minimum(block, n - block * np.arange(nb)).astype(np.float32)
  return sums / counts


def resonance_gate(g: jax.Array, m_hat: jax.Array, faithful: bool) -> jax.Array:
  """``gamma`` in ``[0, 1]`` (see module docstring)."""
  if faithful:
    return 0.5 + 0.5 * jnp.tanh(5.0 * g * m_hat)
  rms = lambda x: jnp.sqrt(jnp.mean(jnp.square(x)))
  a = g * m_hat / (rms(g) * rms(m_hat) + 1e-30)
  return 0.5 + 0.5 * jnp.tanh(a)


# ----------------------------------------------------------------------------
# The transformation.


def _init_leaf(p, compressed: bool, layout: HoloLayout):
  n = math.prod(p.shape)
  if not compressed or n == 0:
    return jnp.zeros(p.shape, jnp.float32), jnp.zeros(p.shape, jnp.float32)
  h, n_chunks = layout.chunking(n)
  if n_chunks > layout.codebook_size:
    raise ValueError(f"codebook_size={layout.codebook_size} is too small: a tensor of shape "
                     f"{tuple(p.shape)} has {n_chunks} chunks, each needing its own key row")
  return (jnp.zeros((layout.heads, h), jnp.complex64),
          jnp.zeros((-(-n // layout.v_block_size),), jnp.float32))


def _leaf_update(g, mu, nu, *, layout, b1, b2, eps, bc1, bc2, rf):
  """One tensor: ``(update float32, new mu, new nu)``."""
  g32 = g.astype(jnp.float32)
  if not jnp.iscomplexobj(mu):  # dense: exact Adam
    m = b1 * mu + (1.0 - b1) * g32
    v = b2 * nu + (1.0 - b2) * jnp.square(g32)
    return (m / bc1) / (jnp.sqrt(v / bc2) + eps), m, v

  n = g.size
  h, n_chunks = layout.chunking(n)
  flat = g32.reshape(-1)
  trace = sketch(flat, h, n_chunks, layout)
  if layout.faithful:
    trace = trace * np.float32(1.0 / math.sqrt(n_chunks))
  hm = b1 * mu + (1.0 - b1) * trace
  sv = b2 * nu + (1.0 - b2) * block_mean_sq(flat, layout.v_block_size)

  if layout.exact_grad and not layout.faithful:
    m_hat = b1 * retrieve(mu, n, n_chunks, layout) + (1.0 - b1) * flat
  else:
    m_hat = retrieve(hm, n, n_chunks, layout)
  gamma = resonance_gate(flat, m_hat, layout.faithful)
  m_g = m_hat * (1.0 - rf + rf * gamma)
  v_el = jnp.repeat(sv, layout.v_block_size, total_repeat_length=sv.size * layout.v_block_size)[:n]
  if layout.faithful:
    u = jnp.sqrt(bc2) / bc1 * jnp.clip(m_g, -2.0, 2.0) / (jnp.sqrt(v_el) + eps)
  else:
    u = (m_g / bc1) / (jnp.sqrt(v_el / bc2) + eps)
  return u.reshape(g.shape), hm.astype(jnp.complex64), sv


def scale_by_holo_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                       holo_ratio: int = 20, v_block_size: int = 32, heads: int = 4,
                       resonance_factor: float = 0.4, warmup_steps: int = 1000,
                       min_compress_size: int = 8192, codebook_size: int = 256,
                       codebook_width: int = 8192, fft_chunk_size: int = 2_000_000,
                       faithful: bool = False, compress: Any = None, seed: int = 0,
                       exact_grad: bool = True) -> optax.GradientTransformationExtraArgs:
  """Rescales updates by HoloAdam's sketched m and block-mean v (see module docstring).

  Args:
    b1, b2, eps: Adam's decay rates (in ``[0, 1)``) and denominator epsilon.
    holo_ratio: chunks per tensor ~ compression of m (chunk length ``N // ratio``).
    v_block_size: elements per block of the block-mean v.
    heads: independent key sets averaged at retrieval.
    resonance_factor: gate strength in ``[0, 1]``, annealed in over ``warmup_steps``.
    min_compress_size: tensors with fewer elements stay dense (exact Adam).
    codebook_size, codebook_width: rows and width of the phase-key codebook.
    fft_chunk_size: at most this many elements are transformed at once.
    faithful: the original gain ``1/sqrt(n)``, gate and clipping.
    compress: None (auto rule), bool, pytree prefix of bools, or callable
      ``params -> pytree of bools``: which tensors are sketched.
    seed: codebook seed (the codebook is recomputed, never stored).
    exact_grad: use ``b1 m^_{t-1} + (1 - b1) g_t`` (sketched history, exact
      current gradient) instead of ``m^_t`` (ignored when ``faithful``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Shape-setting arguments
    (:data:`STATIC_ARGS`) must be ``static_args`` under
    ``optax.inject_hyperparams``.

  Raises:
    ValueError: an argument is out of range (the message names it).
    TypeError: at ``init``, a parameter has a non-floating dtype.
  """
  layout = HoloLayout(holo_ratio, v_block_size, heads, min_compress_size, codebook_size,
                      codebook_width, fft_chunk_size, faithful, seed, exact_grad)
  _check_real("b1", b1, 0.0, 1.0, hi_open=True)
  _check_real("b2", b2, 0.0, 1.0, hi_open=True)
  _check_real("eps", eps, 0.0, math.inf, hi_open=True)
  _check_real("resonance_factor", resonance_factor, 0.0, 1.0)
  _check_real("warmup_steps", warmup_steps, 0.0, math.inf, hi_open=True)

  def init_fn(params):
    for leaf in jax.tree.leaves(params):
      if not jnp.issubdtype(leaf.dtype, jnp.floating):
        raise TypeError(f"holo_adam needs floating-point params, got dtype {leaf.dtype}")
    labels = compress_labels(params, compress, min_compress_size)
    pairs = jax.tree.map(lambda p, c: _init_leaf(p, c, layout), params, labels)
    is_pair = lambda x: isinstance(x, tuple) and not hasattr(x, "_fields")
    return ScaleByHoloAdamState(
        count=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32),
        mu=jax.tree.map(lambda t: t[0], pairs, is_leaf=is_pair),
        nu=jax.tree.map(lambda t: t[1], pairs, is_leaf=is_pair))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    leaves, treedef = jax.tree.flatten(updates)
    mus = treedef.flatten_up_to(state.mu)
    nus = treedef.flatten_up_to(state.nu)
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    bc1 = 1.0 - jnp.asarray(b1, jnp.float32) ** t
    bc2 = 1.0 - jnp.asarray(b2, jnp.float32) ** t
    w = jnp.asarray(warmup_steps, jnp.float32)
    rf = resonance_factor * jnp.where(w > 0, jnp.minimum(t / jnp.maximum(w, 1e-30), 1.0), 1.0)
    finite = jnp.asarray(True)
    for g in leaves:
      finite = finite & jnp.all(jnp.isfinite(g))

    new_u, new_m, new_v = [], [], []
    for g, mu, nu in zip(leaves, mus, nus):
      u, m, v = _leaf_update(g, mu, nu, layout=layout, b1=b1, b2=b2, eps=eps, bc1=bc1,
                             bc2=bc2, rf=rf)
      new_u.append(jnp.where(finite, u, 0.0).astype(g.dtype))
      new_m.append(jnp.where(finite, m, mu))
      new_v.append(jnp.where(finite, v, nu))

    new_state = ScaleByHoloAdamState(
        count=jnp.where(finite, count, state.count),
        skipped=state.skipped + (~finite).astype(jnp.int32),
        mu=treedef.unflatten(new_m), nu=treedef.unflatten(new_v))
    return treedef.unflatten(new_u), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def holo_adam(learning_rate: optax.ScalarOrSchedule = 1e-4, b1: float = 0.9,
              b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.01,
              holo_ratio: int = 20, v_block_size: int = 32, heads: int = 4,
              resonance_factor: float = 0.4, warmup_steps: int = 1000,
              min_compress_size: int = 8192, codebook_size: int = 256,
              codebook_width: int = 8192, fft_chunk_size: int = 2_000_000,
              faithful: bool = False, compress: Any = None, seed: int = 0,
              exact_grad: bool = True, mask: Any = None) -> optax.GradientTransformationExtraArgs:
  """HoloAdam(W): ``chain(scale_by_holo_adam, add_decayed_weights, -lr)``.

  See :func:`scale_by_holo_adam` for the arguments and the module docstring
  for the maths; ``mask`` is ``optax.add_decayed_weights``'. Presets:
  ``holo_adam(1e-4, **HOLO_ADAM_PRESETS["max"])``.

  Example::

    >>> import jax.numpy as jnp, optax
    >>> opt = optax.chain(optax.clip_by_global_norm(1.0), holo_adam(1e-3))
    >>> state = opt.init({"w": jnp.zeros((256, 256))})
  """
  _check_real("weight_decay", weight_decay, 0.0, math.inf, hi_open=True)
  return optax.chain(
      scale_by_holo_adam(b1=b1, b2=b2, eps=eps, holo_ratio=holo_ratio,
                         v_block_size=v_block_size, heads=heads,
                         resonance_factor=resonance_factor, warmup_steps=warmup_steps,
                         min_compress_size=min_compress_size, codebook_size=codebook_size,
                         codebook_width=codebook_width, fft_chunk_size=fft_chunk_size,
                         faithful=faithful, compress=compress, seed=seed,
                         exact_grad=exact_grad),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate))
