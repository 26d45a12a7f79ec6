"""HoloKV's slot attention, the public op: checks its arguments, picks a backend.

Backends (see :mod:`holojax.kernels.backend`): "xla" (the ``jnp``
reference, :mod:`.reference`), "triton" (the flash-decoding Pallas kernel,
:mod:`.pallas_triton`, on GPU) and "interpret" (that kernel in the Pallas
interpreter, any backend). Default order: ("xla",): the kernel is opt-in
(``implementation="triton"`` or "pallas") until it is measured on a GPU;
JAX 0.11 also deprecates Pallas's Triton backend.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from holojax.kernels import backend
from holojax.kernels.holokv.config import SlotTiles
from holojax.kernels.holokv.pallas_triton import check_layout, slot_attention_pallas
from holojax.kernels.holokv.reference import slot_attention_reference

OP = "slot_attention"
DEFAULT_ORDER = ("xla",)


def _xla(qr_bgrd, ks_bsgd, vs_bsgd, n_valid, *, tiles):
  del tiles
  return slot_attention_reference(qr_bgrd, ks_bsgd, vs_bsgd, n_valid)


def _triton(*args, **kw):
  backend.require_triton()
  check_layout(*args, **kw)


BACKENDS = (
    backend.Backend("xla", backend.runs_anywhere, _xla),
    backend.Backend("triton", _triton, functools.partial(slot_attention_pallas, interpret=False)),
    backend.Backend("interpret", check_layout,
                    functools.partial(slot_attention_pallas, interpret=True)),
)
IMPLEMENTATIONS = tuple(b.name for b in BACKENDS)


def _is_float(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.floating)


def _check_args(qr, ks, vs, n_valid):
  if qr.ndim != 4:
    raise ValueError(f"qr_bgrd must be [batch, kv_heads, rows, dim], got {qr.shape=}")
  if ks.ndim != 4:
    raise ValueError(f"ks_bsgd must be [batch, slots, kv_heads, dim], got {ks.shape=}")
  if vs.shape != ks.shape:
    raise ValueError(f"vs_bsgd shape {vs.shape} must equal ks_bsgd shape {ks.shape}")
  (b, g, _, d), (bk, s, gk, dk) = qr.shape, ks.shape
  if (b, g, d) != (bk, gk, dk):
    raise ValueError(f"qr_bgrd (B, G, D) = {(b, g, d)} must match ks_bsgd / vs_bsgd "
                     f"(B, G, D) = {(bk, gk, dk)}")
  if s < 1:
    raise ValueError(f"ks_bsgd must hold at least one slot, got {ks.shape=}")
  for name, x in (("qr_bgrd", qr), ("ks_bsgd", ks), ("vs_bsgd", vs)):
    if not _is_float(x):
      raise ValueError(f"{name} must be floating point, got {x.dtype}")
  shape = n_valid.shape if hasattr(n_valid, "shape") else np.shape(n_valid)
  dtype = getattr(n_valid, "dtype", None)
  if isinstance(n_valid, bool) or shape != () or not (
      isinstance(n_valid, int) or dtype is not None and jnp.issubdtype(dtype, jnp.integer)):
    raise ValueError(f"n_valid must be an integer scalar, got {type(n_valid).__name__} "
                     f"of shape {shape} and dtype {dtype}")
  if isinstance(n_valid, (int, np.integer)) and not 0 <= n_valid <= s:
    raise ValueError(f"n_valid={int(n_valid)} must lie in [0, S={s}]")


def _select(qr, ks, vs, n_valid, implementation, block_s, splits):
  _check_args(qr, ks, vs, n_valid)
  tiles = SlotTiles(splits=splits) if block_s is None else SlotTiles(block_s, splits)
  chosen = backend.select(OP, BACKENDS, implementation, DEFAULT_ORDER, qr, ks, vs, n_valid,
                          tiles=tiles)
  return chosen, tiles


def select_implementation(qr_bgrd: jax.Array, ks_bsgd: jax.Array, vs_bsgd: jax.Array,
                          n_valid: jax.Array | int, *,
                          implementation: backend.Implementation = None,
                          block_s: int | None = None, splits: int | None = None) -> str:
  """The backend :func:`slot_attention` runs for these arguments, by name.

  Arrays or ``jax.ShapeDtypeStruct``s; same errors as the op.

  Example:
    >>> q = jax.ShapeDtypeStruct((1, 2, 12, 64), "float32")
    >>> kv = jax.ShapeDtypeStruct((1, 256, 2, 64), "bfloat16")
    >>> select_implementation(q, kv, kv, 100)
    'xla'
    >>> select_implementation(q, kv, kv, 100, implementation=("interpret", "xla"))
    'interpret'
  """
  return _select(qr_bgrd, ks_bsgd, vs_bsgd, n_valid, implementation, block_s, splits)[0].name


def slot_attention(qr_bgrd: jax.Array, ks_bsgd: jax.Array, vs_bsgd: jax.Array,
                   n_valid: jax.Array | int, *, implementation: backend.Implementation = None,
                   block_s: int | None = None, splits: int | None = None
                   ) -> tuple[jax.Array, jax.Array]:
  """Softmax attention of query rows over HoloKV's compressed cache slots.

  Per batch b, kv head g and row r (rows come coded and scaled, see
  :mod:`.reference`), over the valid slots s < n = n_valid:

    score_s = qr_{bgr} · ks_{bsg},   lse_{bgr} = log sum_{s<n} e^{score_s},
    o_{bgr} = sum_{s<n} e^{score_s - lse_{bgr}} vs_{bsg},

  in float32; n = 0 gives o = 0 and lse = -inf. The caller merges rows
  and exact keys with lse. The cache is read as it is stored (S slots),
  never expanded to tokens.

  Args:
    qr_bgrd: query rows [B, G, R, D], G = kv heads (any float dtype).
    ks_bsgd, vs_bsgd: slot keys and values [B, S, G, D] (bfloat16 or float32).
    n_valid: integer scalar, 0 <= n_valid <= S; may be traced (one compile
      serves every fill; a traced value outside [0, S] is clipped).
    implementation: None (the default order, "xla"), a name ("xla",
      "triton", "interpret", or "pallas" for the compiled Pallas GPU
      backends), or a sequence of names tried in order (see
      :mod:`holojax.kernels.backend`). :func:`select_implementation` says
      which one runs; it runs in ``jax.named_scope("slot_attention/NAME")``.
      The Pallas backends need D a power of two >= 16.
    block_s: slots per step of the Pallas kernel (a power of two >= 16;
      default 64); the reference ignores it.
    splits: Pallas programs per (b, g) sharing the filled slots (a positive
      int; None: enough programs to fill a GPU); the reference ignores it.

  Returns:
    (o float32[B, G, R, D], lse float32[B, G, R]).

  Raises:
    ValueError: bad shapes or dtypes, n_valid not an integer scalar (or a
      concrete one outside [0, S]), bad block_s or splits, an unknown
      implementation, or a forced one that cannot run here.

  Example:
    >>> q = jnp.zeros((1, 1, 2, 4)).at[0, 0, 1, 0].set(1.0)   # 2 rows
    >>> ks = jnp.eye(4)[None, :, None, :]                      # 4 slots
    >>> vs = jnp.arange(16.0).reshape(1, 4, 1, 4)
    >>> o, lse = slot_attention(q, ks, vs, 2)                  # slots 0, 1 only
    >>> o[0, 0, 0]                                             # row 0: the mean
    Array([2., 3., 4., 5.], dtype=float32)
    >>> round(float(lse[0, 0, 1]), 4)                          # row 1: log(e^1 + e^0)
    1.3133
    >>> slot_attention(q, ks, vs, 0)[1][0, 0]
    Array([-inf, -inf], dtype=float32)
  """
  chosen, tiles = _select(qr_bgrd, ks_bsgd, vs_bsgd, n_valid, implementation, block_s, splits)
  with jax.named_scope(f"{OP}/{chosen.name}"):
    return chosen.fn(qr_bgrd, ks_bsgd, vs_bsgd, n_valid, tiles=tiles)
