"""HOLO layers (seed 001): fixed random basis, learned phase and amplitude.

``HoloLinear`` computes

  y = x B^T (A (x) cos Phi)^T (+ b)

with a fixed basis ``B`` [H, in] (Gaussian rows, L2-normalised, generated
from ``basis_seed``), learned phase ``Phi`` [out, H] and amplitude ``A``
[out, H]. Written as a weight, ``W = C B`` with ``C = A (x) cos Phi``
[out, H]: a linear map of rank <= H whose right factor ``B`` is fixed and
whose left factor ``C`` is learned. ``A`` and ``Phi`` are redundant (only
their product ``A cos Phi`` reaches the output; ``sin Phi`` never does), so
the layer has ``2 * out * H`` learned parameters but only ``out * H``
degrees of freedom. A plain low-rank dense ``U V`` with the same parameter
count learns both factors; ``LowRankLinear`` is that honest baseline.

The basis is a ``HoloBasis`` variable, not an ``nnx.Param``: it gets no
gradient under ``nnx.grad(..., argnums=nnx.DiffState(0, nnx.Param))`` and
no optimizer state under ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
  "HoloBasis", "holo_basis", "holo_param_count", "holo_basis_count",
  "lowrank_param_count", "equal_param_rank", "HoloLinear", "LowRankLinear",
  "SineActivation", "HoloAttention", "DenseAttention", "LowRankAttention",
  "HoloTransformerBlock", "HybridHoloBlock", "LowRankTransformerBlock",
]


class HoloBasis(nnx.Variable):
  """A fixed (never trained) basis; regenerable from its seed."""


# ----------------------------------------------------------------------------
# Validation helpers


def _check_pos(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  if value < 1:
    raise ValueError(f"{name} must be >= 1, got {value}")
  return int(value)


def _check_heads(dim: int, heads: int) -> None:
  _check_pos("dim", dim)
  _check_pos("heads", heads)
  if dim % heads:
    raise ValueError(f"heads={heads} must divide dim={dim}")


def _check_input(x, in_features: int, name: str = "x") -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a float array, got dtype {x.dtype}")
  if x.ndim < 1 or x.shape[-1] != in_features:
    raise ValueError(
      f"{name} must have last dim {in_features}, got shape {x.shape}")
  return x


def _check_kernel(kernel_io) -> np.ndarray:
  """A dense kernel [in, out] of floats, as numpy (``from_dense``'s input)."""
  k_io = np.asarray(kernel_io)
  if k_io.ndim != 2:
    raise ValueError(f"kernel_io must be 2-D [in, out], got {k_io.shape}")
  if not np.issubdtype(k_io.dtype, np.floating):
    raise TypeError(f"kernel_io must be float, got dtype {k_io.dtype}")
  return k_io


def _copy_bias(layer, bias) -> None:
  """Copies ``bias`` [out] (if given) into a biased ``layer``."""
  if bias is None:
    return
  b_o = np.asarray(bias)
  if b_o.shape != (layer.out_features,):
    raise ValueError(f"bias must have shape ({layer.out_features},), got {b_o.shape}")
  layer.bias_o[...] = jnp.asarray(b_o, jnp.float32)


def _add_bias(y, b):
  """y[..., o] + b[o] without implicit rank promotion."""
  return y + jnp.reshape(b, (1,) * (y.ndim - 1) + (-1,))


# ----------------------------------------------------------------------------
# Parameter accounting


def holo_param_count(in_features: int, out_features: int, harmonics: int,
                     *, use_bias: bool = False) -> int:
  """Learned parameters of a ``HoloLinear``: ``2 * out * H (+ out)``.

  ``in_features`` does not appear: the basis is fixed (see
  ``holo_basis_count``).

  >>> holo_param_count(784, 256, 32)
  16384
  """
  del in_features
  return 2 * out_features * harmonics + (out_features if use_bias else 0)


def holo_basis_count(in_features: int, harmonics: int) -> int:
  """Elements of the fixed basis ``B`` [H, in] (stored, not learned)."""
  return harmonics * in_features


def lowrank_param_count(in_features: int, out_features: int, rank: int,
                        *, use_bias: bool = False) -> int:
  """Parameters of ``LowRankLinear``: ``rank * (in + out) (+ out)``."""
  return rank * (in_features + out_features) + (
    out_features if use_bias else 0)


def equal_param_rank(in_features: int, out_features: int,
                     harmonics: int) -> int:
  """Largest rank r with ``r (in + out) <= 2 out H`` (at least 1).

  >>> equal_param_rank(512, 512, 32)
  32
  """
  n = holo_param_count(in_features, out_features, harmonics)
  return max(1, n // (in_features + out_features))


# ----------------------------------------------------------------------------
# Basis


def holo_basis(harmonics: int, in_features: int, seed: int = 0) -> jax.Array:
  """The fixed basis ``B`` [H, in]: Gaussian rows scaled to unit L2 norm.

  Drawn on the host with ``numpy.random.default_rng(seed)`` (float64, then
  normalised and cast to float32): deterministic in ``seed`` on every
  platform and independent of JAX's PRNG settings, so a checkpoint may
  store it or regenerate it.

  >>> b_hi = holo_basis(4, 3, seed=0)
  >>> b_hi.shape
  (4, 3)
  """
  _check_pos("harmonics", harmonics)
  _check_pos("in_features", in_features)
  g_hi = np.random.default_rng(seed).standard_normal((harmonics, in_features))
  return jnp.asarray(g_hi / np.linalg.norm(g_hi, axis=-1, keepdims=True),
                     jnp.float32)


# ----------------------------------------------------------------------------
# Linear layers


_AMP_INIT = {"variance": lambda h: math.sqrt(2.0 / h),
             "seed": lambda h: 1.0 / h}


class HoloLinear(nnx.Module):
  """Holographic linear layer ``y = x B^T (A (x) cos Phi)^T (+ b)``.

  A rank <= H linear map with fixed right factor ``B`` [H, in] and learned
  left factor ``A (x) cos Phi`` [out, H]. Phase init as in the seed, ``Phi
  ~ N(0, 1) * 2 pi``. Amplitude init ``init="variance"`` (default): ``A =
  sqrt(2 / H)``, so ``Var(A cos Phi) = 1 / H`` and the effective weight
  ``W = C B`` has ``Var(W) = 1 / in`` (LeCun scale); ``init="seed"``:
  ``A = 1 / H`` as in the seed, which shrinks activations by about
  ``sqrt(2 H)`` per layer (the spiral net then stalls near 64% accuracy in
  500 steps). Learned parameters ``2 * out * H`` (plus ``out`` with a
  bias); the basis (``H * in`` numbers) is a ``HoloBasis``.

  Args:
    in_features: input width (> 0).
    out_features: output width (> 0).
    harmonics: H, the number of basis rows (>= 1).
    use_bias: add a learned bias (the seed has none).
    basis_seed: seed of the fixed basis.
    init: amplitude init, ``"variance"`` or ``"seed"`` (see above).
    rngs: randomness for phase init.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> layer = HoloLinear(8, 4, harmonics=2, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((3, 8))).shape
    (3, 4)
  """

  def __init__(self, in_features: int, out_features: int,
               harmonics: int = 32, *, use_bias: bool = False,
               basis_seed: int = 0, init: str = "variance", rngs: nnx.Rngs):
    self.in_features = _check_pos("in_features", in_features)
    self.out_features = _check_pos("out_features", out_features)
    self.harmonics = _check_pos("harmonics", harmonics)
    if init not in _AMP_INIT:
      raise ValueError(
        f"init must be one of {sorted(_AMP_INIT)}, got {init!r}")
    self.basis_seed = int(basis_seed)
    self.basis_hi = HoloBasis(holo_basis(harmonics, in_features, basis_seed))
    key = rngs.params()
    self.phase_oh = nnx.Param(
      2 * math.pi * jax.random.normal(key, (out_features, harmonics)))
    self.amp_oh = nnx.Param(
      jnp.full((out_features, harmonics), _AMP_INIT[init](harmonics),
               jnp.float32))
    self.bias_o = (nnx.Param(jnp.zeros((out_features,), jnp.float32))
                   if use_bias else None)

  @property
  def coeff_oh(self) -> jax.Array:
    """The learned left factor ``C = A (x) cos Phi`` [out, H]."""
    return self.amp_oh[...] * jnp.cos(self.phase_oh[...])

  def dense_kernel(self) -> jax.Array:
    """The equivalent dense kernel ``(C B)^T`` [in, out] (``y = x K``)."""
    return (self.coeff_oh @ self.basis_hi[...]).T

  def __call__(self, x_bi: jax.Array) -> jax.Array:
    x_bi = _check_input(x_bi, self.in_features)
    r_bh = x_bi @ self.basis_hi[...].T.astype(x_bi.dtype)
    y_bo = r_bh @ self.coeff_oh.T.astype(x_bi.dtype)
    if self.bias_o is not None:
      y_bo = _add_bias(y_bo, self.bias_o[...].astype(x_bi.dtype))
    return y_bo

  @classmethod
  def from_dense(cls, kernel_io, harmonics: int, *, basis_seed: int = 0,
                 bias=None, rngs: nnx.Rngs):
    """Project a dense kernel onto the basis by least squares.

    With ``W = K^T`` [out, in], picks ``C = argmin ||C B - W||_F = W B^+``
    (solved in float64), then sets ``Phi = 0`` and ``A = C`` (a negative
    amplitude carries the sign). Exact when the rows of ``W`` lie in the
    row span of ``B``, e.g. always when ``H >= in``.

    Args:
      kernel_io: dense kernel [in, out] (Flax convention ``y = x K``).
      harmonics: H.
      basis_seed: seed of the basis to project onto.
      bias: optional bias [out]; copied into a biased layer.
      rngs: passed to the constructor.

    Returns:
      ``(layer, rel_err)``, ``rel_err = ||C B - W||_F / ||W||_F``.

    Example:
      >>> import numpy as np
      >>> from flax import nnx
      >>> k_io = np.random.default_rng(0).normal(size=(4, 3))
      >>> layer, err = HoloLinear.from_dense(k_io, 4, rngs=nnx.Rngs(0))
      >>> err < 1e-5   # H >= in: the basis spans everything
      True
    """
    k_io = _check_kernel(kernel_io)
    d_in, d_out = k_io.shape
    layer = cls(d_in, d_out, harmonics, use_bias=bias is not None,
                basis_seed=basis_seed, rngs=rngs)
    b_hi = np.asarray(layer.basis_hi[...], np.float64)
    w_oi = k_io.T.astype(np.float64)
    # min ||B^T C^T - W^T||: columns of W^T regressed on the columns of B^T.
    ct_ho, *_ = np.linalg.lstsq(b_hi.T, w_oi.T, rcond=None)
    c_oh = ct_ho.T
    rel_err = float(np.linalg.norm(c_oh @ b_hi - w_oi)
                    / max(np.linalg.norm(w_oi), 1e-30))
    layer.amp_oh[...] = jnp.asarray(c_oh, jnp.float32)
    layer.phase_oh[...] = jnp.zeros_like(layer.phase_oh[...])
    _copy_bias(layer, bias)
    return layer, rel_err


class LowRankLinear(nnx.Module):
  """Low-rank dense layer ``y = x U V (+ b)``, both factors learned.

  ``U`` [in, r] ~ N(0, 1/in), ``V`` [r, out] ~ N(0, 1/r): the honest
  baseline for ``HoloLinear`` (same rank budget, nothing fixed).
  ``rank * (in + out)`` parameters (plus ``out`` with a bias).

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> LowRankLinear(8, 4, 2, rngs=nnx.Rngs(0))(jnp.ones((3, 8))).shape
    (3, 4)
  """

  def __init__(self, in_features: int, out_features: int, rank: int, *,
               use_bias: bool = False, rngs: nnx.Rngs):
    self.in_features = _check_pos("in_features", in_features)
    self.out_features = _check_pos("out_features", out_features)
    self.rank = _check_pos("rank", rank)
    k_u, k_v = jax.random.split(rngs.params())
    self.u_ir = nnx.Param(
      jax.random.normal(k_u, (in_features, rank)) / math.sqrt(in_features))
    self.v_ro = nnx.Param(
      jax.random.normal(k_v, (rank, out_features)) / math.sqrt(rank))
    self.bias_o = (nnx.Param(jnp.zeros((out_features,), jnp.float32))
                   if use_bias else None)

  @classmethod
  def from_dense(cls, kernel_io, rank: int, *, bias=None, rngs: nnx.Rngs):
    """The best rank-``rank`` approximation of a dense kernel (truncated SVD).

    With ``K = U S V^T`` [in, out], sets ``u = U_r S_r^(1/2)`` and
    ``v = S_r^(1/2) V_r^T`` (solved in float64): by Eckart-Young no rank-r
    map is closer to ``K`` in Frobenius norm.

    Args:
      kernel_io: dense kernel [in, out] (Flax convention ``y = x K``).
      rank: r, at most ``min(in, out)``.
      bias: optional bias [out]; copied into a biased layer.
      rngs: passed to the constructor.

    Returns:
      ``(layer, rel_err)``, ``rel_err = ||u v - K||_F / ||K||_F =
      sqrt(sum_{i > r} s_i^2 / sum_i s_i^2)``.

    Example:
      >>> import numpy as np
      >>> from flax import nnx
      >>> k_io = np.outer(np.arange(1.0, 5.0), np.ones(3))   # rank 1
      >>> layer, err = LowRankLinear.from_dense(k_io, 1, rngs=nnx.Rngs(0))
      >>> err < 1e-6
      True
    """
    k_io = _check_kernel(kernel_io)
    d_in, d_out = k_io.shape
    rank = _check_pos("rank", rank)
    if rank > min(d_in, d_out):
      raise ValueError(f"rank={rank} exceeds min(in, out) = {min(d_in, d_out)}")
    layer = cls(d_in, d_out, rank, use_bias=bias is not None, rngs=rngs)
    u_ik, s_k, vt_ko = np.linalg.svd(k_io.astype(np.float64), full_matrices=False)
    root = np.sqrt(s_k[:rank])
    layer.u_ir[...] = jnp.asarray(u_ik[:, :rank] * root, jnp.float32)
    layer.v_ro[...] = jnp.asarray(root[:, None] * vt_ko[:rank], jnp.float32)
    _copy_bias(layer, bias)
    rel_err = float(np.sqrt(np.sum(s_k[rank:] ** 2) / max(np.sum(s_k ** 2), 1e-300)))
    return layer, rel_err

  def __call__(self, x_bi: jax.Array) -> jax.Array:
    x_bi = _check_input(x_bi, self.in_features)
    y_bo = (x_bi @ self.u_ir[...].astype(x_bi.dtype)) @ self.v_ro[...].astype(
      x_bi.dtype)
    if self.bias_o is not None:
      y_bo = _add_bias(y_bo, self.bias_o[...].astype(x_bi.dtype))
    return y_bo


class SineActivation(nnx.Module):
  """``sin(omega * x)``, the seed's periodic activation.

  Example:
    >>> import jax.numpy as jnp
    >>> float(SineActivation(omega=2.0)(jnp.pi / 4 * jnp.ones(())))
    1.0
  """

  def __init__(self, omega: float = 1.0):
    if not math.isfinite(omega) or omega == 0:
      raise ValueError(f"omega must be finite and non-zero, got {omega}")
    self.omega = float(omega)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"x must be a float array, got dtype {x.dtype}")
    return jnp.sin(self.omega * x)


# ----------------------------------------------------------------------------
# Attention


def _mha(q_btd, k_btd, v_btd, heads: int, causal: bool) -> jax.Array:
  """Softmax multi-head attention on already-projected q, k, v [B, T, D]."""
  b, t, d = q_btd.shape
  split = lambda a: a.reshape(b, t, heads, d // heads)
  o_btnh = jax.nn.dot_product_attention(
    split(q_btd), split(k_btd), split(v_btd), is_causal=causal)
  return o_btnh.reshape(b, t, d)


def _check_seq(x_btd, dim: int) -> jax.Array:
  x_btd = _check_input(x_btd, dim)
  if x_btd.ndim != 3:
    raise ValueError(f"x must be [B, T, {dim}], got shape {x_btd.shape}")
  return x_btd


class _Attention(nnx.Module):
  """Multi-head softmax attention whose q/k/v/o come from ``make_proj``."""

  def __init__(self, dim: int, heads: int, causal: bool, make_proj):
    _check_heads(dim, heads)
    self.dim, self.heads, self.causal = dim, heads, bool(causal)
    self.q, self.k, self.v, self.o = (make_proj(i) for i in range(4))

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    x_btd = _check_seq(x_btd, self.dim)
    a_btd = _mha(self.q(x_btd), self.k(x_btd), self.v(x_btd), self.heads,
                 self.causal)
    return self.o(a_btd)


class HoloAttention(_Attention):
  """Softmax MHA with ``HoloLinear`` q/k/v/o (what the seed's code does).

  Projection ``i`` (q, k, v, o) uses basis seed ``basis_seed + i``, so the
  four projections read different H-dimensional subspaces.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> att = HoloAttention(16, 4, 8, causal=True, rngs=nnx.Rngs(0))
    >>> att(jnp.ones((2, 5, 16))).shape
    (2, 5, 16)
  """

  def __init__(self, dim: int, heads: int, harmonics: int, *,
               causal: bool = False, basis_seed: int = 0, rngs: nnx.Rngs):
    _check_pos("harmonics", harmonics)
    super().__init__(dim, heads, causal, lambda i: HoloLinear(
      dim, dim, harmonics, basis_seed=basis_seed + i, rngs=rngs))


class DenseAttention(_Attention):
  """Softmax MHA with ``nnx.Linear`` q/k/v/o (no bias), the standard one.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> DenseAttention(16, 4, rngs=nnx.Rngs(0))(jnp.ones((1, 3, 16))).shape
    (1, 3, 16)
  """

  def __init__(self, dim: int, heads: int, *, causal: bool = False,
               rngs: nnx.Rngs):
    super().__init__(dim, heads, causal, lambda i: nnx.Linear(
      dim, dim, use_bias=False, rngs=rngs))


class LowRankAttention(_Attention):
  """Softmax MHA with ``LowRankLinear`` q/k/v/o of rank ``rank``."""

  def __init__(self, dim: int, heads: int, rank: int, *,
               causal: bool = False, rngs: nnx.Rngs):
    super().__init__(dim, heads, causal, lambda i: LowRankLinear(
      dim, dim, rank, rngs=rngs))


# ----------------------------------------------------------------------------
# Blocks


class _Block(nnx.Module):
  """Pre-LN block: ``x += attn(LN x); x += fc2(sin(fc1(LN x)))``."""

  def __init__(self, dim: int, attn, fc1, fc2, omega: float, rngs):
    self.dim = dim
    self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
    self.attn = attn
    self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
    self.fc1, self.act, self.fc2 = fc1, SineActivation(omega), fc2

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    x_btd = _check_seq(x_btd, self.dim)
    x_btd = x_btd + self.attn(self.ln1(x_btd))
    return x_btd + self.fc2(self.act(self.fc1(self.ln2(x_btd))))


class HoloTransformerBlock(_Block):
  """The seed's block with every projection a ``HoloLinear``.

  ``x += HoloAttention(LN x); x += HL(4d->d)(sin(HL(d->4d)(LN x)))``.
  Basis seeds: attention ``basis_seed + 0..3``, MLP ``basis_seed + 4, 5``.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> blk = HoloTransformerBlock(16, 4, 8, rngs=nnx.Rngs(0))
    >>> blk(jnp.ones((2, 5, 16))).shape
    (2, 5, 16)
  """

  def __init__(self, dim: int, heads: int, harmonics: int, *,
               causal: bool = True, mlp_ratio: int = 4, omega: float = 1.0,
               basis_seed: int = 0, rngs: nnx.Rngs):
    _check_heads(dim, heads)
    hidden = _check_pos("mlp_ratio", mlp_ratio) * dim
    attn = HoloAttention(dim, heads, harmonics, causal=causal,
                         basis_seed=basis_seed, rngs=rngs)
    fc1 = HoloLinear(dim, hidden, harmonics, basis_seed=basis_seed + 4,
                     rngs=rngs)
    fc2 = HoloLinear(hidden, dim, harmonics, basis_seed=basis_seed + 5,
                     rngs=rngs)
    super().__init__(dim, attn, fc1, fc2, omega, rngs)


class HybridHoloBlock(_Block):
  """Standard dense attention, holographic sine MLP (the seed's "hybrid").

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> HybridHoloBlock(16, 4, 8, rngs=nnx.Rngs(0))(jnp.ones((1, 3, 16))).shape
    (1, 3, 16)
  """

  def __init__(self, dim: int, heads: int, harmonics: int, *,
               causal: bool = True, mlp_ratio: int = 4, omega: float = 1.0,
               basis_seed: int = 0, rngs: nnx.Rngs):
    _check_heads(dim, heads)
    _check_pos("harmonics", harmonics)
    hidden = _check_pos("mlp_ratio", mlp_ratio) * dim
    attn = DenseAttention(dim, heads, causal=causal, rngs=rngs)
    fc1 = HoloLinear(dim, hidden, harmonics, basis_seed=basis_seed + 4,
                     rngs=rngs)
    fc2 = HoloLinear(hidden, dim, harmonics, basis_seed=basis_seed + 5,
                     rngs=rngs)
    super().__init__(dim, attn, fc1, fc2, omega, rngs)


class LowRankTransformerBlock(_Block):
  """The holo block with every ``HoloLinear`` replaced by ``LowRankLinear``.

  ``rank=None`` picks, per projection, ``equal_param_rank(in, out,
  harmonics)``: the same parameter budget as the holo block.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> blk = LowRankTransformerBlock(16, 4, harmonics=8, rngs=nnx.Rngs(0))
    >>> blk(jnp.ones((1, 3, 16))).shape
    (1, 3, 16)
  """

  def __init__(self, dim: int, heads: int, rank: int | None = None, *,
               harmonics: int | None = None, causal: bool = True,
               mlp_ratio: int = 4, omega: float = 1.0, rngs: nnx.Rngs):
    _check_heads(dim, heads)
    hidden = _check_pos("mlp_ratio", mlp_ratio) * dim
    if rank is None:
      if harmonics is None:
        raise ValueError("rank is None: give harmonics to match a holo block")
      _check_pos("harmonics", harmonics)
      r = lambda i, o: equal_param_rank(i, o, harmonics)
    else:
      _check_pos("rank", rank)
      r = lambda i, o: rank
    attn = LowRankAttention(dim, heads, r(dim, dim), causal=causal, rngs=rngs)
    fc1 = LowRankLinear(dim, hidden, r(dim, hidden), rngs=rngs)
    fc2 = LowRankLinear(hidden, dim, r(hidden, dim), rngs=rngs)
    super().__init__(dim, attn, fc1, fc2, omega, rngs)
