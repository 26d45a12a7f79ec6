"""The public causal phasor memory: checks its arguments and picks a backend.

Backends (see :mod:`holojax.kernels.backend`): "xla" (the associative_scan
reference, :mod:`.reference`), "mosaic" (the chunked Pallas Mosaic GPU
kernel, :mod:`.mosaic_gpu`, on Hopper and newer), "triton" (the chunked
Pallas-Triton kernel, :mod:`.pallas_triton`, on any CUDA GPU: JAX 0.11
deprecates Pallas's Triton backend, so it serves pre-Hopper GPUs such as
the seed's L40S) and "interpret" (the Triton kernel in the Pallas
interpreter, any backend; ``phasor_memory_mosaic(interpret=True)`` is the
Mosaic kernel's twin). Default order: ("mosaic", "triton", "xla"), so the
Hopper kernel where it runs, the Triton kernel on older GPUs and the
reference elsewhere (``train/bench/records/phasor--*`` has the measured
speeds).
"""

from __future__ import annotations

import functools

import jax

from holojax.kernels import backend
from holojax.kernels.phasor.config import PhasorBlocks
from holojax.kernels.phasor.mosaic_gpu import phasor_memory_mosaic
from holojax.kernels.phasor.pallas_triton import phasor_memory_pallas
from holojax.kernels.phasor.reference import phasor_memory_reference, read_scale

OP = "phasor_memory"
DEFAULT_ORDER = ("mosaic", "triton", "xla")


def _xla(v, k, q, *, freq_hd, scale, blocks):
  del blocks
  return phasor_memory_reference(v, k, q, freq_hd, scale=scale)


BACKENDS = (
    backend.Backend("xla", backend.runs_anywhere, _xla),
    backend.Backend("mosaic", backend.require_hopper,
                    functools.partial(phasor_memory_mosaic, interpret=False)),
    backend.Backend("triton", backend.require_triton,
                    functools.partial(phasor_memory_pallas, interpret=False)),
    backend.Backend("interpret", backend.runs_anywhere,
                    functools.partial(phasor_memory_pallas, interpret=True)),
)
IMPLEMENTATIONS = tuple(b.name for b in BACKENDS)


def check_implementation(implementation: backend.Implementation
                         ) -> backend.Implementation:
  """``implementation`` if it names backends of the op, a sequence as a tuple.

  Raises:
    ValueError: an unknown name (the message lists the names).

  Example:
    >>> check_implementation(["pallas", "xla"])
    ('pallas', 'xla')
  """
  backend.candidates(OP, IMPLEMENTATIONS, implementation, DEFAULT_ORDER)
  if implementation is None or isinstance(implementation, str):
    return implementation
  return tuple(implementation)


def _check_args(v, k, q, f, scale, blocks):
  if v.ndim != 4:
    raise ValueError(f"v must be [batch, time, heads, dim], got {v.shape=}")
  if k.shape != v.shape:
    raise ValueError(f"k_theta shape {k.shape} must equal v shape {v.shape}")
  if q.shape != v.shape:
    raise ValueError(f"q_theta shape {q.shape} must equal v shape {v.shape}")
  if f is not None and f.shape != v.shape[2:]:
    raise ValueError(f"freq_hd shape {f.shape} must be (heads, dim) = "
                     f"{v.shape[2:]}")
  read_scale(0, scale)  # validates scale
  if blocks is not None and not isinstance(blocks, PhasorBlocks):
    raise ValueError(f"blocks={blocks!r} must be a PhasorBlocks or None")


def _select(v_bthd, k_theta, q_theta, freq_hd, scale, implementation,
            blocks) -> backend.Backend:
  _check_args(v_bthd, k_theta, q_theta, freq_hd, scale, blocks)
  return backend.select(OP, BACKENDS, implementation, DEFAULT_ORDER, v_bthd,
                        k_theta, q_theta, freq_hd=freq_hd, scale=scale,
                        blocks=blocks)


def select_implementation(v_bthd: jax.Array, k_theta: jax.Array,
                          q_theta: jax.Array, *,
                          freq_hd: jax.Array | None = None,
                          scale: str = "sqrt_t",
                          implementation: backend.Implementation = None,
                          blocks: PhasorBlocks | None = None) -> str:
  """The backend :func:`phasor_memory` runs for these arguments, by name.

  Arrays or ``jax.ShapeDtypeStruct``s; same errors as the op.

  Example:
    >>> x = jax.ShapeDtypeStruct((1, 8, 1, 4), "float32")
    >>> select_implementation(x, x, x, implementation=("interpret", "xla"))
    'interpret'
  """
  return _select(v_bthd, k_theta, q_theta, freq_hd, scale, implementation,
                 blocks).name


def phasor_memory(v_bthd: jax.Array, k_theta: jax.Array, q_theta: jax.Array,
                  *, freq_hd: jax.Array | None = None, scale: str = "sqrt_t",
                  implementation: backend.Implementation = None,
                  blocks: PhasorBlocks | None = None) -> jax.Array:
  """Decay-free causal phasor memory, y_t = Re(S_t e^{-i q'_t}) c_t.

  S_t = sum_{s<=t} v_s e^{i k'_s}, c_t = 1/sqrt(t+1) ("sqrt_t") or 1
  ("none"); element-wise over heads and dims. Positional phases may come
  as frequencies: k' = k + t f, q' = q + t f, computed in float32 inside the
  memory, so content phases can be stored in bfloat16 (positions t f reach
  thousands of radians, which bfloat16 cannot hold). Values may be bfloat16;
  phases and the sum are float32; y has v's dtype.

  Args:
    v_bthd: values [B, T, H, D].
    k_theta: key phases [B, T, H, D] (radians).
    q_theta: query phases [B, T, H, D] (radians).
    freq_hd: optional positional frequencies [H, D] (rad/token).
    scale: "sqrt_t" (the seed) or "none".
    implementation: None (the default order: "mosaic" on Hopper, "triton"
      on older GPUs, else "xla"), a name ("xla", "mosaic", "triton",
      "interpret", or "pallas" for the compiled Pallas GPU backends), or a
      sequence of names tried in order (see :mod:`holojax.kernels.backend`). :func:`select_implementation`
      says which one runs; it runs in ``jax.named_scope("phasor_memory/NAME")``.
    blocks: tile sizes of the Pallas backends (``PhasorBlocks()`` if None;
      the reference ignores them).

  Returns:
    y [B, T, H, D] in v's dtype.

  Raises:
    ValueError: bad shapes, scale or blocks; an unknown implementation; a
      forced implementation that cannot run here.

  Example:
    >>> import jax.numpy as jnp
    >>> v = jnp.ones((1, 3, 1, 2)); th = jnp.zeros((1, 3, 1, 2))
    >>> phasor_memory(v, th, th)[0, :, 0, 0]   # (t+1)/sqrt(t+1)
    Array([1.       , 1.4142135, 1.7320508], dtype=float32)
  """
  chosen = _select(v_bthd, k_theta, q_theta, freq_hd, scale, implementation,
                   blocks)
  with jax.named_scope(f"{OP}/{chosen.name}"):
    return chosen.fn(v_bthd, k_theta, q_theta, freq_hd=freq_hd, scale=scale,
                     blocks=blocks)
